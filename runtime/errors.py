"""The errors a user of the runtime can cause.

Every failure that bad input or a bad model file can provoke is raised as one of these, with a
message that names the file and the reason, so that the command line can print one line and pick
the exit code without ever showing a traceback.
"""


class RuntimeFailure(Exception):
    """Base of every error the runtime raises on purpose."""


class InputError(RuntimeFailure):
    """An image (file, bytes or array) that cannot be classified; other inputs still can."""


class ModelError(RuntimeFailure):
    """A model file that cannot be used: missing, corrupt, without metadata, or tampered with."""


class InferenceStopped(ModelError):
    """A model that did not finish a run within the time allowed, and was stopped."""
