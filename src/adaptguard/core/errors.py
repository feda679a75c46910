"""Errors a user can fix by changing a config value or the data on disk.

The CLI prints these as one message and exits non-zero, without a traceback, so each
message must name the offending key and say what would fix it.
"""


class AdaptguardError(Exception):
    """Base class for user-fixable errors."""


class ConfigError(AdaptguardError):
    """A config value is missing, out of range or inconsistent."""


class DataError(AdaptguardError):
    """A dataset is missing or does not have the expected on-disk layout."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError naming ``key`` unless ``condition`` holds (checks across fields)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


class DivergedError(AdaptguardError):
    """Training produced a non-finite loss, gradient or weight: the run stops instead of scoring a broken model."""


class RunInterrupted(BaseException):
    """SIGTERM / SIGINT arrived: stop, record ``status: interrupted``, exit 128 + the signal number.

    A BaseException (not KeyboardInterrupt) so Lightning re-raises it instead of turning it into ``exit 1``.
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


# Exit codes of every command (docs/running.md, "Exit codes").
EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1  # a bug: the traceback is printed
EXIT_USER_ERROR = 2  # a config, data or environment problem the user can fix: one line on stderr
EXIT_DIVERGED = 3  # training diverged (non-finite loss, gradient or weights); results.json has status failed
EXIT_SWEEP_FAILED = 4  # a sweep (or a report on one) finished with failed jobs; each job's results.json says why


def exit_code(err: BaseException) -> int:
    """The documented exit status for ``err``: 128 + signal for interrupts (130 SIGINT, 143 SIGTERM)."""
    if isinstance(err, RunInterrupted):
        return 128 + err.signum
    if isinstance(err, DivergedError):
        return EXIT_DIVERGED
    if isinstance(err, AdaptguardError):
        return EXIT_USER_ERROR
    return EXIT_INTERNAL_ERROR
