"""The ``adaptguard`` console script: ``adaptguard <command> [Hydra overrides | options]``."""

from __future__ import annotations

import importlib
import sys

from adaptguard.cli.errors import EXIT_USER_ERROR

COMMANDS = {
    "run": ("adaptguard.cli.run", "one experiment, or a sweep with -m"),
    "protect": ("adaptguard.cli.protect", "protect a model: <out>/model/ to publish, <out>/owner.key to keep"),
    "verify": ("adaptguard.cli.verify", "does a suspect checkpoint carry my watermark? (key=... suspect=...)"),
    "calibrate": ("adaptguard.cli.calibrate", "a key's false-positive rate on never-watermarked models"),
    "forge": ("adaptguard.cli.forge", "can a key be forged for a model that never carried the watermark?"),
    "report": ("adaptguard.cli.report", "sweep tables; --out: the results page, seeds averaged"),
    "layers": ("adaptguard.cli.layers", "which UNet blocks fine-tuning moves (busy / lazy)"),
    "pretrain": ("adaptguard.cli.pretrain", "remake the shipped base weights and feature extractors"),
}


def usage() -> str:
    lines = ["usage: adaptguard <command> [args]", "", "commands:"]
    lines += [f"  {name:<9} {help}" for name, (_, help) in COMMANDS.items()]
    lines += ["", "e.g. adaptguard run defense=backdoor attack=lora; adaptguard <command> --help for its options"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n{usage()}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    sys.argv = [f"adaptguard {command}", *rest]
    importlib.import_module(COMMANDS[command][0]).main()


if __name__ == "__main__":
    main()
