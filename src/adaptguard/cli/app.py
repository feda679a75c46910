"""What every command shares: override parsing, quiet libraries, one-line user errors, the Hydra entry."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig

from adaptguard.cli.config import config_dir
from adaptguard.cli.cpus import cap_torch_threads
from adaptguard.cli.errors import EXIT_USER_ERROR, command_exit_code, user_error
from adaptguard.core.errors import RunInterrupted


def check_overrides(argv: list[str]) -> None:
    """Parse command-line overrides up front so a malformed one is reported with its text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-"):
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as err:
            reason = str(err).splitlines()[0]
            print(
                f"error: cannot parse override {arg!r}: {reason}.\n"
                "Write key=value (e.g. attack.steps=200, dataset.splits.owner.where.kind=[circle,star]); "
                "quote values with spaces or special characters: key='\"a b\"'. "
                "Grammar: https://hydra.cc/docs/advanced/override_grammar/basic/",
                file=sys.stderr,
            )
            sys.exit(EXIT_USER_ERROR)


def check_keys(argv: list[str], config_name: str) -> None:
    """Compose once before Hydra: a misspelt key is one line with the nearest real key, not Hydra's advice to
    append it with ``+`` (which would silently add a key nothing reads). Sweeps (``-m``) are left to Hydra."""
    import difflib

    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    from adaptguard.cli.config import compose

    overrides = [a for a in argv if not a.startswith("-")]
    if len(overrides) != len(argv) or not overrides:
        return
    try:
        compose(overrides, config_name=config_name)
    except ConfigCompositionException as err:
        text = str(err) + str(err.__cause__ or "")
        if "is not in struct" not in text or not (
            bad := next((o for o in overrides if f"'{o.split('=')[0]}'" in text), None)
        ):
            return  # Hydra's own message says it
        key = bad.split("=")[0]
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(compose([o for o in overrides if o != bad], config_name=config_name), parent or "")
        keys = [str(k) for k in node.keys() if k != "_target_"] if OmegaConf.is_dict(node) else []
        near = difflib.get_close_matches(name, keys, n=1, cutoff=0.5)
        hint = f"did you mean {parent + '.' if parent else ''}{near[0]}?" if near else f"its keys: {', '.join(keys)}"
        print(f"error: {key}: no such key in this config ({hint}); docs list every key", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception:  # noqa: BLE001 - anything else: Hydra reports it as usual
        return


def quiet_libraries() -> None:
    """Keep stdout for our progress and summary: no per-file bars or tips from libraries."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger(f"{name}.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
    warnings.filterwarnings("ignore", message=".*set_vital.*")  # torchdata's StatefulDataLoader on torch 2.14
    os.environ.setdefault("WANDB_SILENT", "true")


@contextmanager
def user_errors(keep_going: bool = False) -> Iterator[None]:
    """A user-fixable error becomes ``error: <key>: <problem>`` on stderr and its exit status (docs/running.md);
    bugs propagate with their traceback. ``keep_going`` (a sweep job): report and return, so the next job runs;
    interrupts still stop everything with 130 / 143."""
    try:
        with interrupts():
            yield
    except RunInterrupted as err:
        print(f"error: {err}; results.json records status: interrupted", file=sys.stderr)
        sys.exit(command_exit_code(err))
    except Exception as err:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        message = user_error(err)
        if message is None:
            if not keep_going:
                raise
            traceback.print_exc()
            return
        print(f"error: {message}", file=sys.stderr)
        if not keep_going:
            sys.exit(command_exit_code(err))


@contextmanager
def interrupts() -> Iterator[None]:
    """SIGTERM / SIGINT raise :class:`RunInterrupted` so the run records them (Lightning would exit 0 / 1)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise RunInterrupted(signum)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def hydra_command(task: Callable[[DictConfig], Any], config_name: str = "config") -> Callable[[], Any]:
    """A Hydra entry point for ``task`` that reads conf/ wherever the command is run from."""
    import hydra

    with user_errors():
        path = str(config_dir())
    cap_torch_threads()
    return hydra.main(version_base="1.3", config_path=path, config_name=config_name)(task)
