"""Caching or fewer steps: the records of the Sensitivity Calibrator's `tune_schedule` and the verdict drawn from them.

What the Calibrator measures (nodes/tuning.py), per calibration sample (one of its runs: its seed, its uncached result
as the reference) and per tuned fraction of the base steps (TUNE_FRACTIONS: 1/2, 1/3, 1/4):
- every candidate schedule for fewer steps (sencache_core.schedule: the scheduler at other shifts, warps of the base
  schedule, the profile's plan), sampled from the same noise;
- SenCache caching in budget mode at the same fraction, with the profile of the *other* calibration runs.
Each result's error is `error_db`: 20·log10(‖result − reference‖_rms / ‖reference‖_rms), in dB (lower = closer; a
difference of two errors on the same sample is a PSNR-like difference, positive = the first is worse).

The record ("schedule_tuning" in the profile's metadata):
    {"version": 2, "sampler", "scheduler", "steps", "samples": R,
     "fractions": {key: {"steps": b, "error_db": {candidate: [R values]}, "caching_db": [R values],
                         "caching_computed": [R counts]}}}

Choosing a schedule (`best_candidates`): the candidate with the lowest mean error over all samples.
The verdict (`verdict`): judged on samples the choice was not made on. For each sample i, the schedule is chosen on
the other samples and its error on sample i is compared with caching's on sample i (leave-one-out: every sample is
judged once, never by a choice it took part in, so the best of many candidates is not flattered). The mean of these
held-out differences ± its standard error decides: a winner only when the difference is beyond
t(0.975, R − 1) standard errors and at least MIN_DIFFERENCE_DB; otherwise "no clear winner — keep the default"
(caching). Fewer than MIN_VERDICT_SAMPLES samples give no verdict at all. Samplers that add noise (ancestral, SDE)
are judged the same way: their runs at different step counts follow different noise, and that noise is part of the
sample-to-sample spread the standard error measures, so where it dominates the verdict is "no clear winner".
"""
from __future__ import annotations

import math

import numpy as np


VERSION = 2
TUNE_FRACTIONS = (1 / 2, 1 / 3, 1 / 4)     # real steps / base steps that the Calibrator tunes
MIN_VERDICT_SAMPLES = 3                    # held-out samples needed for a verdict (t with 2 degrees of freedom)
MIN_DIFFERENCE_DB = 1.0                    # a smaller difference is "level" whatever its standard error
CACHING = "caching"
FEWER_STEPS = "fewer steps"
# two-sided 95 % Student t quantiles by degrees of freedom (numpy has no t distribution)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000}


def t975(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with df degrees of freedom (the next tabulated df below; 1.96 above)."""
    if df < 1:
        return float("inf")
    known = [d for d in _T975 if d <= df]
    return _T975[max(known)] if df <= 60 else 1.96


def error_db(rms_error: float, rms_reference: float) -> float:
    """20·log10(rms_error / rms_reference); −200 dB for an exact match (capped, so means stay finite)."""
    if rms_reference <= 0 or not math.isfinite(rms_reference):
        raise ValueError(f"the reference has RMS {rms_reference}: nothing to compare with")
    return max(-200.0, 20.0 * math.log10(max(rms_error, 1e-300) / rms_reference))


def tune_steps(base_steps: int) -> dict:
    """{fraction key: real steps} tuned for a base schedule of base_steps steps (≥ 3 real steps: with 2 the anchored
    candidates would all be the same schedule)."""
    out = {}
    for f in TUNE_FRACTIONS:
        b = int(math.floor(base_steps * f + 0.5))
        if 3 <= b < base_steps:
            out[f"{f:.4f}"] = b
    return out


def _entries(tuning: dict):
    if not tuning or tuning.get("version") != VERSION:
        return {}
    return tuning.get("fractions", {})


def _means(errors: dict, skip: int | None = None) -> dict:
    """{candidate: mean error} over the samples (all, or all but index `skip`), finite values only."""
    out = {}
    for name, vals in errors.items():
        v = [float(x) for i, x in enumerate(vals) if i != skip and x is not None and math.isfinite(float(x))]
        if v:
            out[name] = float(np.mean(v))
    return out


def best_candidates(tuning: dict) -> dict:
    """{fraction key: (candidate name, its mean error in dB)}: the schedule chosen on all samples."""
    out = {}
    for key, entry in _entries(tuning).items():
        means = _means(entry.get("error_db", {}))
        if means:
            name = min(means, key=means.get)
            out[key] = (name, means[name])
    return out


def verdict(tuning: dict, key: str) -> dict:
    """Caching against fewer steps at one tuned fraction, judged on held-out samples (module docstring).
    Returns {"winner": CACHING | FEWER_STEPS | None, "difference_db": mean (schedule − caching error; > 0: caching
    closer), "se_db", "samples", "schedule": the candidate chosen on all samples, "reason"}."""
    entry = _entries(tuning).get(key) or {}
    errors, caching = entry.get("error_db") or {}, entry.get("caching_db") or []
    best = best_candidates(tuning).get(key)
    out = {"winner": None, "difference_db": None, "se_db": None, "samples": len(caching),
           "schedule": best[0] if best else None, "reason": None}
    n = len(caching)
    if n < MIN_VERDICT_SAMPLES or not errors:
        out["reason"] = (f"{n} calibration sample(s): a verdict needs at least {MIN_VERDICT_SAMPLES} (runs) to be "
                         "judged on samples the schedule was not chosen on")
        return out
    diffs = []
    for i in range(n):
        means = _means(errors, skip=i)
        if not means or caching[i] is None:
            continue
        chosen = min(means, key=means.get)
        e = errors[chosen][i]
        if e is not None and math.isfinite(float(e)):
            diffs.append(float(e) - float(caching[i]))
    if len(diffs) < MIN_VERDICT_SAMPLES:
        out["reason"] = "too few comparable samples"
        return out
    m = float(np.mean(diffs))
    se = float(np.std(diffs, ddof=1) / math.sqrt(len(diffs)))
    out.update(difference_db=m, se_db=se, samples=len(diffs))
    if abs(m) >= MIN_DIFFERENCE_DB and abs(m) > t975(len(diffs) - 1) * se:
        out["winner"] = CACHING if m > 0 else FEWER_STEPS
    else:
        out["reason"] = "within noise"
    return out


def tuning_summary(tuning: dict) -> str:
    """One line per tuned fraction: the verdict, the difference ± its standard error and the schedule chosen."""
    lines = []
    for key, entry in _entries(tuning).items():
        b = entry["steps"]
        v = verdict(tuning, key)
        head = f"{b} of {tuning.get('steps')} steps: "
        sched = f"best fewer-steps schedule {v['schedule']}" if v["schedule"] else "no schedule measured"
        if v["difference_db"] is None:
            lines.append(head + f"no verdict ({v['reason']}); {sched}")
            continue
        d = f"{abs(v['difference_db']):.1f} ± {v['se_db']:.1f} dB over {v['samples']} held-out samples"
        if v["winner"] == CACHING:
            lines.append(head + f"SenCache caching closer by {d} -> keep caching (target_speedup {tuning['steps'] / b:.2g})")
        elif v["winner"] == FEWER_STEPS:
            lines.append(head + f"fewer steps ({v['schedule']}) closer by {d} -> SenCache Schedule with {b} steps")
        else:
            who = "caching" if v["difference_db"] > 0 else "fewer steps"
            lines.append(head + f"no clear winner ({who} ahead by {d}) -- keep the default (caching); {sched}")
    return "; ".join(lines) if lines else "no schedule tuning"


def merge_tuning(tunings: list) -> dict | None:
    """The records of several calibrations of the same base schedule and candidates, their samples side by side
    (None if they differ or are missing)."""
    tunings = [t for t in tunings if t]
    if not tunings or any(t.get("version") != VERSION for t in tunings):
        return None
    base = {k: tunings[0].get(k) for k in ("sampler", "scheduler", "steps")}
    if any({k: t.get(k) for k in base} != base for t in tunings):
        return None
    fracs = {}
    for key, first in tunings[0].get("fractions", {}).items():
        entries = [t["fractions"].get(key) for t in tunings]
        if any(e is None or e.get("steps") != first.get("steps") for e in entries):
            continue
        names = set.intersection(*(set(e.get("error_db", {})) for e in entries))
        fracs[key] = {"steps": first["steps"],
                      "error_db": {n: [v for e in entries for v in e["error_db"][n]] for n in sorted(names)},
                      "caching_db": [v for e in entries for v in e.get("caching_db", [])],
                      "caching_computed": [v for e in entries for v in e.get("caching_computed", [])]}
    return dict(base, version=VERSION, samples=int(sum(int(t.get("samples", 0)) for t in tunings)), fractions=fracs)
