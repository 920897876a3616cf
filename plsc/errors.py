"""Every error class of plsc.

User errors (PlscError and its subclasses) are what a user can cause: the console scripts' one wrapper
(plsc.cli.wrapper) prints their message as one line `prog: error: ...` and exits with code 2, no
traceback. Anything else that escapes a command is plsc's own bug: traceback, exit code 1.
"""


class PlscError(Exception):
    """Base class of every user-facing plsc error."""


class ConfigError(PlscError):
    """Bad config file, unknown key, wrong type, unknown registered name."""


class DataError(PlscError):
    """Bad dataset file: missing path, corrupt record, bad label line, undecodable image."""


class CheckpointError(PlscError):
    """Missing, truncated or incompatible checkpoint."""


class ExportError(PlscError):
    """The model could not be exported, or the exported model disagrees with the dygraph model."""


class FCStorageOverflow(PlscError):
    """A float16-stored FC row left float16's range."""


class UsageError(PlscError):
    """A bad command line (unknown option, missing argument, invalid value): argparse's complaint."""


# ------------------------------------------------------------------ internal signals
# Raised and caught inside plsc, turned into one of the errors above (naming the file) before a user sees them.

class Refused(Exception):
    """A value the format does not use (turned into the caller's error, naming the file)."""


class ArchUnreadable(Exception):
    """The file's tensors do not say an architecture parameter (a tensor missing or of the wrong rank)."""
