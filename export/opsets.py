"""The ONNX opsets an export can write: one home for the default and the limits, read by the
converter (``export.onnx_export``), the ONNX format's options and the command line."""

from __future__ import annotations

DEFAULT_OPSET = 17
MIN_OPSET = 13  # per-channel QDQ quantization needs 13


def opset_range() -> tuple[int, int]:
    """From per-channel QDQ's minimum to the newest opset that both the converter (tf2onnx) and
    the installed ONNX package know."""
    import onnx
    from tf2onnx.constants import OPSET_TO_IR_VERSION

    return MIN_OPSET, min(max(OPSET_TO_IR_VERSION), onnx.defs.onnx_opset_version())
