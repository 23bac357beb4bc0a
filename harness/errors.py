"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class HarnessError(Exception):
    """Bad input or an impossible setting: the message says what is wrong and how to fix it."""
