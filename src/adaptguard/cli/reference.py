"""The reference pages' key tables, generated from the config classes, so the docs are true by construction.

    python -m adaptguard.cli.reference            # rewrite every table in docs/ (make docs)
    python -m adaptguard.cli.reference --check    # exit 1, one line per page whose tables are stale

A table sits between marker comments naming ``prefix=module.Class`` pairs; the prose around it stays
hand-written::

    <!-- keys: defense=adaptguard.defenses.aiao.AIAODefense -->
    | key | default | meaning |
    ...
    <!-- /keys -->

A key's meaning is the ``doc`` of its field (``setting(..., doc="...")``). Data modules are configured
through ``__init__``, not fields: each documents its own parameters in a class-level ``KEY_DOCS`` mapping
beside its ``__init__`` (``tests/test_docs.py`` checks it covers every parameter). Rows, defaults and the
option values beside them are described in :mod:`adaptguard.cli.key_table`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from adaptguard.cli.config import config_dir
from adaptguard.cli.key_table import Option, load_class, load_options, names_class, table

MARKER = re.compile(r"(<!-- keys: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /keys -->)", re.DOTALL)


def docs_dir() -> Path:
    """The checkout's docs/, beside the conf/ the commands read."""
    return config_dir().parent / "docs"


def parse_spec(spec: str) -> list[tuple[str, type]]:
    """``defense=adaptguard.defenses.aiao.AIAODefense ...`` -> [(prefix, class), ...]."""
    pairs = []
    for item in spec.split():
        prefix, sep, path = item.partition("=")
        if not sep or not prefix or not path:
            raise ValueError(f"keys marker: {item!r} is not prefix=module.Class")
        pairs.append((prefix, load_class(path)))
    return pairs


def render_page(text: str, conf: Path | None = None) -> str:
    """``text`` with every marked table regenerated."""
    conf = conf or config_dir()
    specs = [(m.start(), parse_spec(m["spec"])) for m in MARKER.finditer(text)]
    groups: dict[str, list[Option]] = {}

    def options(group: str) -> list[Option]:
        if group not in groups:
            groups[group] = load_options(conf / group) if (conf / group).is_dir() else []
        return groups[group]

    def regenerate(match: re.Match[str]) -> str:
        pairs = parse_spec(match["spec"])
        found = _ordered(
            [o for group in dict.fromkeys(p.split(".")[0] for p, _ in pairs) for o in options(group)], pairs
        )

        def nested(key: str) -> str | None:
            for start, other in specs:
                if start != match.start() and any(prefix == key for prefix, _ in other):
                    return "(below)" if start > match.start() else "(above)"
            return None

        return f"{match[1]}{table(pairs, found, nested)}\n{match[4]}"

    return MARKER.sub(regenerate, text)


def _ordered(options: Sequence[Option], pairs: Sequence[tuple[str, type]]) -> list[Option]:
    """Options in the order of the classes they configure (``full, lora, dreambooth``), else by name."""
    classes = [c for _, c in pairs]

    def rank(option: Option) -> int:
        target = option.config.get("_target_")
        return next((i for i, cls in enumerate(classes) if names_class(target, cls)), len(classes))

    return sorted(options, key=rank)


def pages(root: Path) -> list[Path]:
    """The docs pages with key tables."""
    return [p for p in sorted(root.rglob("*.md")) if MARKER.search(p.read_text())]


def stale(paths: Sequence[Path]) -> list[Path]:
    """The pages whose tables differ from what the config classes generate now."""
    return [p for p in paths if render_page(p.read_text()) != p.read_text()]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        print(__doc__)
        return 0
    check = "--check" in args
    root = docs_dir()
    paths = [Path(a) for a in args if a != "--check"] or pages(root)
    if check:
        outdated = stale(paths)
        for path in outdated:
            print(f"{path}: key tables are out of date with the config classes; run `make docs`")
        return 1 if outdated else 0
    for path in paths:
        text = path.read_text()
        new = render_page(text)
        if new != text:
            path.write_text(new)
            print(f"{path}: key tables regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
