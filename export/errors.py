"""The export package's errors: whatever stops an export with a message for the user.

``python -m export`` turns an :class:`ExportError` (and the data and runtime errors of the stages
below) into one line and exit code 2; an artifact that fails its gate is not an error (exit 1).
"""


class ExportError(Exception):
    """A release that cannot be built: missing model, mismatched data, unusable options."""


class PublishError(ExportError):
    """The output folder cannot be used: unwritable, locked by another export, or the user's own."""


class OutlierError(ExportError):
    """The model has no layer pair where an outlier channel can be made without changing it."""
