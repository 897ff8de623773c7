"""The one exception type that the command-line tools turn into a one-line error."""


class UserError(Exception):
    """A problem with what the user gave us (a file, a flag, a prompt).

    The CLIs print it as a single line on stderr and exit non-zero; it never
    becomes a traceback.
    """
