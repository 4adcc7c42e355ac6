"""Text from untrusted sources (file names, model labels, client names) made safe to print.

A file name or a label can hold a newline, a terminal escape sequence or a bidirectional override:
printed raw, it forges result lines, clears the screen or reorders what a reader sees. Every
human-readable line the project prints passes such text through :func:`printable` first.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Control characters, format characters (bidi overrides, zero-width joiners), line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def utf8_safe(text: str) -> str:
    """``text`` with bytes that are not UTF-8 (kept by Python as surrogate escapes) written as
    ``\\xNN``: valid UTF-8 for any output, JSON included (which escapes the control characters itself)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with every control or format character escaped (``\\n``, ``\\x1b``, ``\\u202e``) and
    bytes that are not UTF-8 (kept by Python as surrogate escapes) written as ``\\xNN``, so that it
    prints as one inert line on any terminal; cut to ``limit`` characters if given."""
    safe = "".join(_escape(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in utf8_safe(text))
    return safe if limit is None or len(safe) <= limit else safe[: limit - 3] + "..."


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type if it has none), cut to ``limit``: for
    library errors whose first line says what went wrong and the rest is context."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def one_line(exc: BaseException, limit: int = 600) -> str:
    """An exception's whole message on one line (its type if it has none), cut to ``limit``: for
    library errors whose reason comes after their first line (Keras' loading errors)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return printable(text or type(exc).__name__, limit)
