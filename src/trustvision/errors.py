"""Exception types for user mistakes: each message names the value and says how to fix it."""


class TrustvisionError(Exception):
    """Base class of every error trustvision raises for a user mistake or bad input."""


class ConfigError(TrustvisionError):
    """A config file or override names an unknown key or holds a bad value."""


class DataError(TrustvisionError):
    """A data set cannot be found, fetched or read."""


class ChecksumError(DataError):
    """A file's SHA-256 differs from the one pinned in the catalog."""


class DivergenceError(TrustvisionError):
    """Training produced a NaN or infinite loss."""


class FederationError(TrustvisionError):
    """Too few federated clients answered a round for it to be aggregated."""
