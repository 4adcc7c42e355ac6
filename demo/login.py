"""The demo's login check, with failed attempts logged and throttled per client and per user.

Gradio checks ``--auth-file`` passwords itself, as fast as they arrive and without a word: 300
guesses took 2 s. :class:`LoginGuard` replaces that check. Each failure is logged with the client's
address and waits ``FAILURE_DELAY_S`` before it is answered; after ``MAX_FAILURES`` failures in a
row for one user from one client (or ``MAX_CLIENT_FAILURES`` for any users from one client) that
client is locked out, for ``LOCKOUT_S`` doubling with every further attempt up to
``MAX_LOCKOUT_S``, during which even the right password is refused. A success clears the user's
count. Gradio does not hand the request to its login check, so :class:`ClientAddress` (an ASGI
middleware) records each request's peer address for it. Behind a reverse proxy every client has the
proxy's address: throttling is then per proxy, which is why the page should be served directly or
by a proxy that throttles itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_FAILURES = 5
MAX_CLIENT_FAILURES = 20
FAILURE_DELAY_S = 1.0
LOCKOUT_S = 30.0
MAX_LOCKOUT_S = 900.0
MAX_TRACKED = 10_000  # (client, user) pairs remembered; the oldest are forgotten first

_CLIENT = contextvars.ContextVar("demo_client_address", default="unknown")


class ClientAddress:
    """ASGI middleware: the peer address of the request being handled, for :class:`LoginGuard`."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        token = _CLIENT.set(str((scope.get("client") or ("unknown",))[0]))
        try:
            await self.app(scope, receive, send)
        finally:
            _CLIENT.reset(token)


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0


class LoginGuard:
    """The accounts of ``--auth-file``, throttled as described above; :meth:`check` is Gradio's ``auth``."""

    def __init__(
        self,
        accounts: list[tuple[str, str]],
        clock: Callable[[], float] = time.monotonic,
        delay_s: float = FAILURE_DELAY_S,
        lockout_s: float = LOCKOUT_S,
    ) -> None:
        self.accounts = dict(accounts)
        self.clock, self.delay_s, self.lockout_s = clock, delay_s, lockout_s
        self.records: OrderedDict[tuple[str, str | None], _Record] = OrderedDict()

    async def check(self, username: str, password: str) -> bool:
        """Gradio's ``auth`` callable. A coroutine *function*, as Gradio tests with
        ``inspect.iscoroutinefunction`` before awaiting: an object with an async ``__call__`` fails
        that test, and its un-awaited coroutine would count as a successful login."""
        client = _CLIENT.get()
        keys = ((client, username), (client, None))
        now = self.clock()
        locked = max(self._record(key).locked_until for key in keys) > now
        if not locked and self._matches(username, password):
            self.records.pop((client, username), None)
            log.info("login of %r from %s", username, client)
            return True
        for key, limit in zip(keys, (MAX_FAILURES, MAX_CLIENT_FAILURES)):
            self._fail(key, limit, now)
        record = self._record((client, username))
        why = "locked out" if locked else f"wrong user or password ({record.failures} in a row)"
        log.warning("failed login of %r from %s: %s", username, client, why)
        await asyncio.sleep(self.delay_s)
        return False

    def _matches(self, username: str, password: str) -> bool:
        expected = self.accounts.get(username)
        # compared even for an unknown user, so the answer's timing does not tell which users exist
        same = hmac.compare_digest(password.encode(), (expected or "\0" + password).encode())
        return expected is not None and same

    def _record(self, key: tuple[str, str | None]) -> _Record:
        record = self.records.setdefault(key, _Record())
        self.records.move_to_end(key)
        while len(self.records) > MAX_TRACKED:
            self.records.popitem(last=False)
        return record

    def _fail(self, key: tuple[str, str | None], limit: int, now: float) -> None:
        record = self._record(key)
        record.failures += 1
        if record.failures >= limit:
            lockout = min(MAX_LOCKOUT_S, self.lockout_s * 2 ** (record.failures - limit))
            record.locked_until = max(record.locked_until, now + lockout)
            if record.failures == limit:
                who = f"user {key[1]!r}" if key[1] is not None else "every user"
                log.warning("%s locked out for %s after %d failed logins: %.0f s", key[0], who, limit, lockout)
