"""Turning exceptions into one-line messages for the user, and the exit codes of every command."""

from __future__ import annotations

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from adaptguard.core.errors import (  # noqa: F401 - the exit codes are this module's API too
    EXIT_DIVERGED,
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    EXIT_SWEEP_FAILED,
    EXIT_USER_ERROR,
    AdaptguardError,
    exit_code,
)


def user_error(err: BaseException) -> str | None:
    """The message for an error the user can fix, or None for a bug (shown with traceback)."""
    from hydra.errors import InstantiationException

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, AdaptguardError):
            return str(seen)
        if isinstance(seen, MissingMandatoryValue):
            key = getattr(seen, "full_key", None) or "?"
            return f"{key}: this value is required; set it on the command line, e.g. {key}=..."
        if isinstance(seen, OmegaConfBaseException):
            key = getattr(seen, "full_key", None)
            first = str(seen).splitlines()[0]
            return f"{key}: {first}" if key else first
        if isinstance(seen, InstantiationException) and (
            seen.__cause__ is None or isinstance(seen.__cause__, TypeError)  # e.g. an unexpected config key
        ):
            return " ".join(str(seen).split())
        seen = seen.__cause__ or seen.__context__
    return None


def command_exit_code(err: BaseException) -> int:
    """The exit status of a command that stopped with ``err``: a user-fixable config error is 2 whatever raised it."""
    code = exit_code(err)
    return EXIT_USER_ERROR if code == EXIT_INTERNAL_ERROR and user_error(err) is not None else code
