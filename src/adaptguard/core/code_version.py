"""Which code built an artifact: a fingerprint of the source a stage runs, for cache keys and results.json.

The cache keys an artifact by its config *and* by the code that built it, so editing a defense rebuilds
its protections and editing evaluation re-scores the models, instead of serving what the old code made.
A stage's code is the modules that define its classes (or functions) and every module of the same
package they import, directly or not, found by reading their import statements (nothing is executed).
Comments, docstrings and config fields' ``doc=`` texts do not count, so editing them keeps the cache; the
versions of the numerical libraries do count. An import of a package counts that package's ``__init__`` (and what it imports), not
its siblings: editing one defense leaves the other defenses' protections cached.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import subprocess
import sys
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# what else decides the numbers besides our source: a new release of these may change them
LIBRARIES = ("torch", "diffusers", "transformers", "peft", "lightning", "torchmetrics", "numpy", "scipy")


def module_name(obj: Any) -> str:
    """The module that defines ``obj``: a module name, a module, a class, an instance or a function."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    if isinstance(obj, type | types.FunctionType | types.MethodType):
        return obj.__module__
    return type(obj).__module__


def source_file(module: str) -> Path | None:
    """The ``.py`` file of ``module``, or None (built-in, compiled, not found). Found on disk from its top-level
    package's location, so looking a module up never runs it."""
    loaded = sys.modules.get(module)
    if (path := getattr(loaded, "__file__", None)) is not None:
        return Path(path) if str(path).endswith(".py") else None
    top, _, rest = module.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for location in spec.submodule_search_locations or []:
        base = Path(location, *rest.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


@functools.lru_cache(maxsize=4096)
def _parsed(path: str, mtime_ns: int, size: int) -> tuple[str, tuple[tuple[str, tuple[str, ...], int], ...]]:
    """(digest of the source without comments and docstrings, its imports) of one file version."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
    imports: list[tuple[str, tuple[str, ...], int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports += [(alias.name, (), 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.module or "", tuple(alias.name for alias in node.names), node.level))
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and _docstring(node):
            node.body = node.body[1:] or [ast.Pass()]
        if isinstance(node, ast.Call) and _called(node) == "setting":  # a config field's doc= is documentation
            node.keywords = [k for k in node.keywords if k.arg != "doc"]
    digest = hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()
    return digest, tuple(imports)


def _docstring(node: ast.AST) -> bool:
    body = getattr(node, "body", [])
    first = body[0] if body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def _called(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _file_info(path: Path) -> tuple[str, tuple[tuple[str, tuple[str, ...], int], ...]]:
    stat = path.stat()
    return _parsed(str(path), stat.st_mtime_ns, stat.st_size)


def _resolve(module: str, path: Path, name: str, level: int) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name}" if name else package


def module_closure(roots: Iterable[str]) -> dict[str, Path]:
    """``roots`` and every module of their top-level packages they import, directly or not, with their files."""
    roots = list(roots)
    packages = {r.partition(".")[0] for r in roots}
    found: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in found:
            continue
        path = source_file(module)
        if path is None:
            continue
        found[module] = path
        for name, names, level in _file_info(path)[1]:
            base = _resolve(module, path, name, level)
            if base.partition(".")[0] not in packages:
                continue
            todo.append(base)
            todo += [f"{base}.{n}" for n in names if n != "*" and source_file(f"{base}.{n}") is not None]
    return found


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Installed versions of :data:`LIBRARIES` (fixed for the life of a process)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def code_fingerprint(*objects: Any) -> str:
    """16 hex digits that change when the source of the modules defining ``objects``, of anything of their
    package they import, or the version of a numerical library changes (not when a comment does)."""
    closure = module_closure(module_name(o) for o in objects)
    h = hashlib.sha256()
    for module in sorted(closure):
        h.update(f"{module}:{_file_info(closure[module])[0]}\n".encode())
    for name, version in sorted(library_versions().items()):
        h.update(f"{name}=={version}\n".encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def git_state() -> dict[str, Any] | None:
    """The commit of the checkout adaptguard runs from and whether its source differs from it (None: not a
    git checkout, or no git)."""
    folder = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()  # fmt: skip
        root = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", "src",
                                "conf"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def provenance(*objects: Any) -> dict[str, Any]:
    """What results.json and an artifact's ``provenance.json`` record about the code that made them."""
    from adaptguard import __version__

    return {
        "code": code_fingerprint(*objects) if objects else None,
        "adaptguard": __version__,
        "git": git_state(),
        "libraries": library_versions(),
        "python": sys.version.split()[0],
    }
