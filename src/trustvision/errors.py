"""Exception types a user sees: each message names the value or file, the reason and the fix.

Each kind has its exit code (README, "Exit codes"): 2 for bad input (a config value, a file, a
data set), 1 for a run that diverged, 3 for the machine refusing (a folder that cannot be
written, a full disk), 4 for a federation that failed (too few clients answered a round, a
Flower process died).
"""

from __future__ import annotations


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
    """The federation failed: too few clients answered a round for it to be aggregated, a
    Flower process died, or two SuperNodes answered as one client."""


class EnvironmentFailure(TrustvisionError):
    """The machine refused what a command needs: a folder it cannot write, a full disk."""


def environment_failure(err: OSError, *, doing: str | None = None) -> EnvironmentFailure:
    """One line for an operating-system error: what failed, on which path, why, what to do."""
    path = f" `{err.filename}`" if err.filename else ""
    reason = err.strerror or str(err)
    what = f"{doing}: " if doing else ""
    return EnvironmentFailure(
        f"{what}cannot use{path} ({reason}): check that the folder exists and is writable and "
        "that the disk has space, or point the command elsewhere (`runs_dir=`, `--out`, "
        "`TRUSTVISION_DATA`)"
    )


EXIT_CODES = {DivergenceError: 1, EnvironmentFailure: 3, FederationError: 4}
EXIT_BAD_INPUT = 2


def exit_code(err: TrustvisionError) -> int:
    """The process exit code of an error (README, "Exit codes")."""
    return next(
        (code for kind, code in EXIT_CODES.items() if isinstance(err, kind)), EXIT_BAD_INPUT
    )
