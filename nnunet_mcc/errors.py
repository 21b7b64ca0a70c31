"""The one exception the command line turns into a clear one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user (a file, a folder, an argument): the message names it and the problem."""

    exit_code = 2
