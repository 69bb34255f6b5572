"""The one exception type for bad user input.

Library code raises `UserError` when an argument, path or file is wrong; the message
names the argument or file, the offending value, what is allowed and the fix. The CLI
prints it as a single `error: ...` line and exits with code 2 (no traceback).
"""


class UserError(Exception):
    """Bad input that the user can fix; shown without a traceback (exit code 2)."""
