"""Schedule-tuning records: what the Sensitivity Calibrator's `tune_schedule` measured, kept in a profile's metadata
("schedule_tuning") — per tuned fraction of the base steps, each candidate schedule's error against the full-step run
and SenCache caching's error at the same fraction — and what is read back from them."""
from __future__ import annotations

import math

import numpy as np

from .samplers import adds_noise


def best_candidates(tuning: dict) -> dict:
    """{fraction key: (candidate name, its mean error)} from a profile's "schedule_tuning" metadata."""
    out = {}
    for key, entry in (tuning or {}).get("fractions", {}).items():
        errs = {k: float(v) for k, v in entry.get("error", {}).items() if math.isfinite(float(v))}
        if errs:
            name = min(errs, key=errs.get)
            out[key] = (name, errs[name])
    return out


def caching_error(tuning: dict, key: str) -> float | None:
    """The RMS error SenCache caching (budget mode, that fraction) had in the tuning, or None if not recorded."""
    c = ((tuning or {}).get("fractions", {}).get(key) or {}).get("caching") or {}
    v = c.get("error")
    return float(v) if v is not None and math.isfinite(float(v)) else None


def tuning_summary(tuning: dict) -> str:
    """One line per tuned fraction: the best schedule for fewer steps and, where measured, caching at that fraction
    (RMS latent difference from the full-step run; smaller is closer)."""
    stochastic = adds_noise(tuning.get("sampler"))
    parts = []
    for key, (name, err) in best_candidates(tuning).items():
        b = tuning["fractions"][key]["steps"]
        cache = caching_error(tuning, key)
        line = f"{b} of {tuning.get('steps')} steps: best schedule {name} (RMS {err:.3g})"
        if cache is not None:
            n = (tuning["fractions"][key].get("caching") or {}).get("computed")
            line += f", SenCache caching RMS {cache:.3g}" + (f" ({n} computed)" if n is not None else "")
            if not stochastic:
                line += " -> " + ("fewer steps with this schedule" if err < cache else "caching") + " is closer"
        parts.append(line)
    if stochastic and parts:
        parts.append(f"{tuning.get('sampler')} adds noise at every step, differently for each step count, so these "
                     "differences say little about which option is better: compare the results by eye")
    return "; ".join(parts) if parts else "no schedule tuning"


def merge_tuning(tunings: list) -> dict | None:
    """Mean errors of several "schedule_tuning" records of the same base schedule (None if they differ or are
    missing)."""
    tunings = [t for t in tunings if t]
    if not tunings:
        return None
    base = {k: tunings[0].get(k) for k in ("sampler", "scheduler", "steps")}
    if any({k: t.get(k) for k in base} != base for t in tunings):
        return None
    fracs = {}
    for key in tunings[0].get("fractions", {}):
        entries = [t["fractions"].get(key) for t in tunings]
        if any(e is None for e in entries):
            continue
        names = set.intersection(*(set(e["error"]) for e in entries))
        fracs[key] = {"steps": entries[0]["steps"],
                      "error": {n: float(np.mean([e["error"][n] for e in entries])) for n in sorted(names)},
                      "runs": int(sum(e.get("runs", 1) for e in entries))}
        cached = [(e.get("caching") or {}).get("error") for e in entries]
        if all(v is not None for v in cached):
            fracs[key]["caching"] = {"error": float(np.mean(cached))}
    return dict(base, fractions=fracs)
