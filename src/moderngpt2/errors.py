"""The one exception type for mistakes a user can fix.

Raise ``UserError`` for bad input (a missing file, a malformed record, an impossible setting): the command
line prints its message as one line and exits with status 2 instead of showing a traceback.
"""


class UserError(Exception):
    """A problem in the user's input, with a message that says what is wrong and what to do."""
