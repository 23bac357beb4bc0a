"""Data errors: the message names the file (and record) at fault and where correct data comes from."""


class DataError(Exception):
    """Missing, corrupt or malformed data; the CLI prints the message as one line and exits non-zero."""
