"""Content-addressed cache of models and keys shared between stages and runs.

An artifact is a folder named by the hash of the spec that produced it, so a sweep over
attacks protects once, and the tiny base model is pretrained once per config. Builders
write into ``<hash>.partial`` and the folder is renamed into place only when complete. A build
that was killed leaves its ``.partial``: the next build clears it, except ``checkpoints/`` (the
resume points of its training stages), which are dropped once the artifact is complete. A file lock makes
parallel sweep jobs wait for one builder instead of all building the same thing (``filelock``: fcntl on
POSIX, msvcrt on Windows; ``ADAPTGUARD_LOCKS=soft`` uses lock files alone, for shared storage whose
``fcntl`` locks do not work, see docs/running.md).

Under DDP (:mod:`adaptguard.core.ranks`) rank 0 takes the locks, decides and writes; every other rank
builds alongside it (a build's training needs every rank) into a scratch folder of its own that is
deleted afterwards, then waits at a barrier until rank 0's artifact is in place.

The spec of an artifact that our code builds includes that code's fingerprint (``code=``, see
:mod:`adaptguard.core.code_version`): editing a defense rebuilds its protections, editing evaluation
re-scores. Each folder's ``provenance.json`` records the code, git commit and library versions that made it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import filelock

from adaptguard.core import ranks
from adaptguard.core.code_version import code_fingerprint, provenance
from adaptguard.core.private import make_private, private_file
from adaptguard.core.redact import redact

# Bump when a change to the code would make old artifacts wrong for the same config. Artifacts built with a
# ``code`` argument are keyed by their code already; this is for the shipped ones (base models, feature
# extractors), which are released weights keyed by config alone.
CACHE_VERSION = 1
SPEC_FILE = "spec.json"
PROVENANCE_FILE = "provenance.json"  # the code, commit and libraries that built an artifact (not in its key)
RESUME_DIR = "checkpoints"  # inside a build folder: resume points, kept across a killed build


def with_code(spec: Mapping[str, Any], code: Sequence[Any]) -> Mapping[str, Any]:
    """``spec`` keyed also by the fingerprint of ``code`` (the classes, functions or modules that build it)."""
    return {**spec, "code": code_fingerprint(*code)} if code else spec


def default_cache_root() -> Path:
    """``$ADAPTGUARD_CACHE``, else ``$XDG_CACHE_HOME/adaptguard``, else ``~/.cache/adaptguard``."""
    if env := os.environ.get("ADAPTGUARD_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adaptguard"


def spec_hash(spec: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit hash of a JSON-able spec (key order does not matter)."""
    blob = json.dumps({"cache_version": CACHE_VERSION, **spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def weights_sha256(module: Any) -> str:
    """Hash of a module's state (names and values): identifies the weights an artifact was built from."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def shipped_dir() -> Path:
    """Artifacts that ship inside the package (made by ``make pretrain``)."""
    return Path(str(resources.files("adaptguard"))) / "assets"


class ArtifactCache:
    """``use_shipped``: artifacts packaged with adaptguard count as cached (same hash, same spec)."""

    def __init__(self, root: str | Path | None = None, use_shipped: bool = True) -> None:
        self.root = Path(root).expanduser() if root else default_cache_root()
        self.use_shipped = use_shipped

    def path(self, kind: str, spec: Mapping[str, Any]) -> Path:
        return self.root / kind / spec_hash(spec)

    def shipped(self, kind: str, spec: Mapping[str, Any]) -> Path | None:
        path = shipped_dir() / f"{kind}-{spec_hash(spec)}"
        return path if self.use_shipped and (path / SPEC_FILE).is_file() else None

    def ship(self, kind: str, spec: Mapping[str, Any]) -> Path:
        """Copy a cached artifact into the package assets so fresh clones need not rebuild it."""
        src = self.path(kind, spec)
        if not src.is_dir():
            raise FileNotFoundError(f"no cached {kind} artifact for this spec at {src}")
        dest = shipped_dir() / f"{kind}-{spec_hash(spec)}"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.ckpt", "checkpoints"))
        return dest

    def get_or_build(
        self,
        kind: str,
        spec: Mapping[str, Any],
        build: Callable[[Path], None],
        private: bool = False,
        code: Sequence[Any] = (),
    ) -> Path:
        """Return the artifact folder for ``spec``, calling ``build(workdir)`` if absent.

        ``private`` folders (keys, masks) are readable by the owner only, every file in them included,
        and their ``spec.json`` has secret config values (key seeds, triggers) redacted. ``code``: the
        classes, functions or modules that build the artifact; their source (and what of adaptguard they
        import) joins the key, so editing them rebuilds it (:func:`~adaptguard.core.code_version.code_fingerprint`).
        """
        return self.fetch(kind, spec, build, private, code)[0]

    def fetch(
        self,
        kind: str,
        spec: Mapping[str, Any],
        build: Callable[[Path], None],
        private: bool = False,
        code: Sequence[Any] = (),
    ) -> tuple[Path, bool]:
        """:meth:`get_or_build`, also saying whether this call built it (False: it came from the cache)."""
        spec = with_code(spec, code)
        if shipped := self.shipped(kind, spec):
            return shipped, False
        final = self.path(kind, spec)
        if ranks.share(final.is_dir()):
            return final, False
        final.parent.mkdir(parents=True, exist_ok=True)
        main = ranks.is_main()
        with _locked(final.with_name(final.name + ".lock")) if main else nullcontext():
            if ranks.share(final.is_dir()):  # another process finished it while we waited
                return final, False
            if main:
                work = final.with_name(final.name + ".partial")
                clear_stale(work)
            else:  # this rank's outputs are thrown away; rank 0 writes the artifact
                work = final.with_name(f"{final.name}.rank{ranks.rank()}")
                shutil.rmtree(work, ignore_errors=True)
            work.mkdir(exist_ok=True)
            if private:
                os.chmod(work, 0o700)
            build(work)
            if main:
                self._finish(work, final, spec, private)
            else:
                shutil.rmtree(work, ignore_errors=True)
            ranks.barrier()  # every rank returns once the artifact is in place
        return final, True

    def _finish(self, work: Path, final: Path, spec: Mapping[str, Any], private: bool) -> None:
        """Drop the resume points, write spec and provenance, and move the build into place."""
        shutil.rmtree(work / RESUME_DIR, ignore_errors=True)
        shown = redact(spec, fingerprint=self.fingerprint) if private else spec  # the hash is of the full spec
        (work / SPEC_FILE).write_text(json.dumps(shown, indent=2, sort_keys=True, default=str))
        made = {**provenance(), "code": spec.get("code")}  # the fingerprint already in the key
        (work / PROVENANCE_FILE).write_text(json.dumps(made, indent=2))
        if private:
            make_private(work)
        os.replace(work, final)

    def fingerprint(self, value: Any) -> str:
        """A secret value as ``hmac-sha256:<16 hex>`` keyed by this cache's salt (``<root>/.salt``, 0600): equal
        secrets give equal fingerprints, and a small key seed cannot be guessed from it without the salt."""
        salt_file = self.root / ".salt"
        if not salt_file.is_file():  # the first of several processes (sweep jobs, DDP ranks) to link its salt wins
            self.root.mkdir(parents=True, exist_ok=True)
            mine = salt_file.with_name(f".salt.{os.getpid()}")
            with private_file(mine) as handle:
                handle.write(secrets.token_hex(16).encode())
            try:
                os.link(mine, salt_file)
            except FileExistsError:
                pass
            finally:
                mine.unlink()
        digest = hmac.new(salt_file.read_bytes(), json.dumps(value, default=str).encode(), hashlib.sha256)
        return f"hmac-sha256:{digest.hexdigest()[:16]}"

    def resume_dir(self, kind: str, spec: Mapping[str, Any], code: Sequence[Any] = ()) -> Path:
        """Where a stage that is not itself cached (an attack) keeps its checkpoints until it completes (``code``:
        as in :meth:`fetch`, so edited code never resumes from the old code's checkpoints)."""
        return self.root / "resume" / kind / spec_hash(with_code(spec, code))

    @contextmanager
    def holding(self, folder: Path) -> Iterator[None]:
        """One process at a time uses ``folder`` (parallel sweep jobs that would share a resume dir); under DDP the
        lock is rank 0's, held for all ranks."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _locked(folder.with_name(folder.name + ".lock")) if ranks.is_main() else nullcontext():
            yield

    def evict(self, kind: str, spec: Mapping[str, Any]) -> None:
        shutil.rmtree(self.path(kind, spec), ignore_errors=True)


def clear_stale(work: Path) -> None:
    """What a killed build left in ``work``, except its resume points: never merged into the next build."""
    if not work.is_dir():
        return
    for entry in work.iterdir():
        if entry.name == RESUME_DIR:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _locked(lock_path: Path) -> filelock.BaseFileLock:
    """An exclusive lock on ``lock_path``: the OS's (released when the process dies), or with
    ``ADAPTGUARD_LOCKS=soft`` the file's existence alone (for storage without working locks; a killed
    holder leaves the ``.lock`` file behind, and it must be deleted by hand)."""
    if os.environ.get("ADAPTGUARD_LOCKS", "").lower() == "soft":
        return filelock.SoftFileLock(lock_path)
    return filelock.FileLock(lock_path)
