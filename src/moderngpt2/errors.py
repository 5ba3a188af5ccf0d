"""The one exception type for mistakes a user can fix.

Raise ``UserError`` for bad input (a missing file, a malformed record, an impossible setting): the command
line prints its message as one line and exits with status 2 instead of showing a traceback.
"""


class UserError(Exception):
    """A problem in the user's input, with a message that says what is wrong and what to do."""


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of an exception's message (its type's name when the message is empty):
    what a one-line error quotes from a library's multi-line message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
