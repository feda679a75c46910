"""Settings that apply to one option of a swept group: ``per_option.<group>.<option name>.<key>``.

A sweep over ``attack=full,lora,prune`` cannot say ``attack.steps=60``: ``prune`` has no steps.
A preset instead says ``per_option: {attack: {full: {steps: 60}, lora: {steps: 60}}}`` and each
job merges the entry of the option it runs (by its ``name``) into the group before anything is built.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from adaptguard.core.errors import ConfigError

SEED_MARK = "<seed>"


def apply_per_option(cfg: DictConfig) -> DictConfig:
    """``cfg`` with each group's ``per_option`` entry for its chosen option merged in (a key the option
    does not have is a ConfigError naming it: nothing is silently added)."""
    per_option = cfg.get("per_option") or {}
    for group, options in per_option.items():
        node = OmegaConf.select(cfg, str(group))
        if not OmegaConf.is_dict(node) or "name" not in node:
            raise ConfigError(f"per_option.{group}: no config group '{group}' with a name; use model, dataset, "
                              "defense or attack")  # fmt: skip
        for key, value in (options or {}).get(str(node.name), {}).items():
            if key not in node:
                keys = ", ".join(str(k) for k in node if k != "_target_")
                raise ConfigError(f"per_option.{group}.{node.name}.{key}: {group}={node.name} has no key '{key}' "
                                  f"(its keys: {keys})")  # fmt: skip
            OmegaConf.update(cfg, f"{group}.{key}", value, merge=True)
    return cfg


def experiment_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config that defines a job: without where it writes and logs (paths, hydra, logger),
    the per-option table (already merged in) and the seed. Values derived from ``seed`` read ``<seed>``,
    so jobs that differ only by seed have equal configs (what ``adaptguard report`` averages)."""
    marked = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    marked.seed = SEED_MARK
    out: dict[str, Any] = {}
    for key in marked:
        if key in ("paths", "hydra", "per_option", "seed", "logger", "skip_finished"):
            continue
        try:
            out[str(key)] = OmegaConf.to_container(marked[key], resolve=True) if OmegaConf.is_config(
                marked[key]) else marked[key]  # fmt: skip
        except Exception:  # noqa: BLE001 - a resolver that computes with the seed: the job's own values
            out[str(key)] = OmegaConf.to_container(cfg[key], resolve=True)
    return out
