"""The training package's errors: whatever stops a run with a message for the user.

``python -m train`` turns a :class:`TrainError` (a data error included) into one line and exit
code 2; the other stages catch :class:`DataError` when they read a dataset.
"""


class TrainError(Exception):
    """A run that must not or cannot start (its output folder, its options)."""


class DataError(TrainError):
    """Data that cannot be found or read; the message names the file."""
