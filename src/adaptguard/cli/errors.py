"""Turning exceptions into one-line messages for the user, and the exit codes of every command."""

from __future__ import annotations

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from adaptguard.core.errors import AdaptguardError

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1  # a bug: the traceback is printed
EXIT_USER_ERROR = 2  # a config, data or environment problem the user can fix: one line on stderr


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
