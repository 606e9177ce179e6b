"""Errors that reach the user as one line that says what to do."""


class UserError(Exception):
    """A problem with the user's input or environment; the message is one line that says what to do."""


class InfeasibleBatchError(UserError):
    """The dataset cannot supply the requested batch; a sweep records the cell as skipped."""
