"""The root exception of sei-tf.

Every error that a user can cause (bad data, a bad kernel, a physics that does not
fit, a training run that cannot go on) is a `SeiTfError`. The command-line tools
print such errors as one line and exit with status 1; any other exception is a
bug and keeps its traceback.
"""


class SeiTfError(Exception):
    """Something the user can fix; the message says what and where."""


class PhysicsError(SeiTfError, ValueError):
    """A description of the instrument that is invalid, or does not fit the data."""
