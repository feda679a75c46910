"""Caches that know the code: editing a defense rebuilds its protections, editing evaluation re-scores, and a
comment changes nothing. Each run is the real command line of an edited copy of the package, in a subprocess."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adaptguard.core.code_version import code_fingerprint, module_closure
from tests.helpers import REPO

ARGS = ["model=micro", "defense=backdoor", "defense.steps=3", "defense.batch_size=4", "defense.num_samples=4",
        "defense.null_keys=7", "attack=none", "model.sampler.steps=2", "eval.fid.num_samples=8",
        "eval.fid.kid_subset_size=4", "eval.fid.kid_subsets=2", "eval.grid_samples=4", "logger=none",
        "progress=false"]  # fmt: skip
QUALITY = {"quality_base/clean", "quality_protected/clean"}
VERIFY = {"verify_base", "verify_protected"}


class Checkout:
    """A copy of the package and its configs (the shipped weights linked, not copied) that tests edit."""

    def __init__(self, root: Path, source: Path | None = None) -> None:
        self.root = root
        if source is not None:  # a copy of another checkout, its cache included
            shutil.copytree(source, root, symlinks=True)
            self.runs = len(list(root.glob("run*")))
            return
        package = root / "src" / "adaptguard"
        shutil.copytree(REPO / "src" / "adaptguard", package, ignore=shutil.ignore_patterns("assets", "__pycache__"))
        (package / "assets").symlink_to(REPO / "src" / "adaptguard" / "assets")
        shutil.copytree(REPO / "conf", root / "conf")
        self.runs = 0

    def edit(self, module: str, line: str) -> None:
        path = self.root / "src" / Path(*module.split(".")).with_suffix(".py")
        path.write_text(path.read_text() + f"\n{line}\n")

    def run(self) -> dict:
        """``adaptguard run ARGS`` with this copy's code, into one shared cache; its results.json."""
        self.runs += 1
        out = self.root / f"run{self.runs}"
        env = {**os.environ, "PYTHONPATH": str(self.root / "src"), "ADAPTGUARD_CACHE": str(self.root / "cache"),
               "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}  # fmt: skip
        env.pop("ADAPTGUARD_CONFIG_DIR", None)
        proc = subprocess.run([sys.executable, "-m", "adaptguard.cli.main", "run", *ARGS, f"hydra.run.dir={out}"],
                              cwd=self.root, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads((out / "results.json").read_text())
        assert results["provenance"]["code"], "results.json records the code fingerprint"
        return results


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A checkout that has run once: every artifact of the command is in its cache."""
    checkout = Checkout(tmp_path_factory.mktemp("built") / "checkout")
    return checkout, checkout.run()


@pytest.fixture
def checkout(built, tmp_path):
    """A private copy of the built checkout (its edits stay its own)."""
    return Checkout(tmp_path / "checkout", source=built[0].root)


def test_the_fingerprint_follows_imports_and_ignores_comments_and_docstrings(tmp_path, monkeypatch):
    pkg = tmp_path / "labpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text('"""Helps."""\nSCALE = 2  # the scale\nSTEPS = setting(3, doc="steps")\n')
    (pkg / "defense.py").write_text("from labpkg.helper import SCALE\n\n\ndef protect(x):\n    return x * SCALE\n")
    (pkg / "other.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert set(module_closure(["labpkg.defense"])) == {"labpkg.defense", "labpkg.helper"}
    before = code_fingerprint("labpkg.defense")
    (pkg / "helper.py").write_text('"""Helps with scaling."""\nSCALE = 2  # the scale, doubled\n'
                                   'STEPS = setting(3, doc="optimizer steps")\n')  # fmt: skip
    (pkg / "other.py").write_text("VALUE = 3\n")  # not imported by the defense
    assert code_fingerprint("labpkg.defense") == before
    (pkg / "helper.py").write_text('"""Helps."""\nSCALE = 3\n')
    assert code_fingerprint("labpkg.defense") != before


@pytest.mark.slow
def test_editing_a_defense_rebuilds_its_protection_and_verifications(built, checkout):
    first = built[1]
    assert first["cached"] == []
    checkout.edit("adaptguard.defenses.backdoor", "# a comment: nothing that runs changed")
    again = checkout.run()
    assert set(again["cached"]) == {"protect", *VERIFY, *QUALITY}
    assert again["protected"] == first["protected"] and again["provenance"]["code"] == first["provenance"]["code"]
    checkout.edit("adaptguard.defenses.backdoor", "EDITED = True")
    edited = checkout.run()
    # the protection and what the defense's code verifies are rebuilt; FID/KID (no defense code) are not
    assert set(edited["cached"]) == QUALITY, edited["cached"]
    assert edited["provenance"]["code"] != first["provenance"]["code"]
    assert edited["run"]["protection"] != first["run"]["protection"]


@pytest.mark.slow
def test_editing_evaluation_rescores_and_editing_training_reprotects(checkout):
    checkout.edit("adaptguard.metrics.quality", "EDITED = True")  # evaluation: FID/KID are scored anew
    rescored = checkout.run()
    assert set(rescored["cached"]) == {"protect", *VERIFY}, rescored["cached"]
    checkout.edit("adaptguard.training.loop", "EDITED = True")  # the training loop the defense's protect uses
    retrained = checkout.run()
    assert "protect" not in retrained["cached"], retrained["cached"]
