"""Errors a user can cause. The CLI prints their message and exits with code 2 (no traceback)."""


class PlscError(Exception):
    """Base class of every user-facing plsc error."""


class ConfigError(PlscError):
    """Bad config file, unknown key, wrong type, unknown registered name."""


class DataError(PlscError):
    """Bad dataset file: missing path, corrupt record, bad label line, undecodable image."""


class CheckpointError(PlscError):
    """Missing, truncated or incompatible checkpoint."""
