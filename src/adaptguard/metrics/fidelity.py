"""Prompt fidelity: the share of generated images that show what their prompt asked for.

The shapes analogue of a CLIP score. A classifier trained on real images only (the domain
feature extractor's heads) reads each attribute of a generated image; an attribute matches
when it reads the value the prompt names. Its ceiling is the same number on real images
with their own captions: what the classifier can confirm at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

ALL = "all"


def attribute_matches(
    logits: Mapping[str, torch.Tensor], labels: Mapping[str, Sequence[str]], wanted: Sequence[Mapping[str, str] | None]
) -> dict[str, torch.Tensor]:
    """Per attribute, (N,) float: 1 where image i shows the value its prompt asks for, 0 where it does not,
    NaN where the prompt names no value the classifier knows (that image does not count for that attribute)."""
    out = {}
    for attribute, values in labels.items():
        if attribute not in logits:
            continue
        index = {v: i for i, v in enumerate(values)}
        target = torch.tensor([index.get((w or {}).get(attribute, ""), -1) for w in wanted])
        predicted = logits[attribute].argmax(1).cpu()
        match = (predicted == target).float()
        match[target < 0] = float("nan")
        out[attribute] = match
    return out


def joint_matches(matches: Mapping[str, torch.Tensor], attributes: Sequence[str]) -> torch.Tensor:
    """(N,): 1 where every one of ``attributes`` matches; NaN where any of them cannot be checked."""
    stacked = torch.stack([matches[a] for a in attributes])
    return torch.where(stacked.isnan().any(0), torch.tensor(float("nan")), stacked.prod(0))


def fidelity_matches(
    matches: Mapping[str, torch.Tensor], groups: Mapping[str, Sequence[str]]
) -> dict[str, torch.Tensor]:
    """Per-image matches of each attribute, each group whose attributes the classifier reads, and all of them."""
    out = dict(matches)
    for name, attributes in groups.items():
        if all(a in matches for a in attributes):
            out[name] = joint_matches(matches, attributes)
    if matches:
        out[ALL] = joint_matches(matches, list(matches))
    return out


def shares(per_image: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The share of checkable images that match, per name (NaN: no image could be checked)."""
    return {k: float(v.nanmean()) if (~v.isnan()).any() else float("nan") for k, v in per_image.items()}
