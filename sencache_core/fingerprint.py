"""Cheap model fingerprint: architecture config + a digest of a few small tensors (never a pass over the
weights). `arch` must match for a profile to apply; `weights` differing (another checkpoint, dtype or
fine-tune of the same architecture) only earns a warning."""
from __future__ import annotations

import hashlib
import json
from typing import Mapping

import torch

N_SMALL = 4
MAX_SMALL_NUMEL = 4096


def _jsonable(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return None


def model_fingerprint(config: Mapping, tensors: Mapping[str, torch.Tensor]) -> dict:
    arch_cfg = {k: _jsonable(v) for k, v in sorted(config.items()) if _jsonable(v) is not None}
    arch = hashlib.sha256(json.dumps(arch_cfg, sort_keys=True).encode()).hexdigest()[:16]
    small = sorted(k for k, t in tensors.items()
                   if isinstance(t, torch.Tensor) and 0 < t.numel() <= MAX_SMALL_NUMEL and t.device.type != "meta")[:N_SMALL]
    h = hashlib.sha256()
    for k in small:
        t = tensors[k].detach().double()
        # 2 significant digits: stable across fp32/bf16/fp16 copies of the same weights in most cases
        h.update(f"{k}:{tuple(t.shape)}:{float(t.mean()):.2g}:{float(t.abs().mean()):.2g}".encode())
    return {"arch": arch, "weights": h.hexdigest()[:16], "config": arch_cfg, "tensors": small}


def compare_fingerprints(profile_fp: Mapping | None, model_fp: Mapping) -> str:
    """'match', 'weights_differ', 'arch_differs' or 'unknown' (profile has no fingerprint, e.g. imported)."""
    if not profile_fp or "arch" not in profile_fp:
        return "unknown"
    if profile_fp["arch"] != model_fp["arch"]:
        return "arch_differs"
    return "match" if profile_fp.get("weights") == model_fp["weights"] else "weights_differ"
