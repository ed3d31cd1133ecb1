"""Caching or fewer steps: the Sensitivity Calibrator's `tune_schedule` measurements, made after its calibration runs.

Every calibration run is one sample: its seed's noise and its uncached result (the reference). For each tuned
fraction of the steps (sencache_core.tuning.tune_steps) and each sample, it samples every candidate schedule for
fewer steps (sencache_core.schedule.candidate_schedules: for flow models the scheduler at other shifts, made here
with ComfyUI's own scheduler) and SenCache caching in budget mode at the same fraction with the profile of the other
runs, and records each result's error against the reference (sencache_core.tuning.error_db). The choice and the
verdict are drawn from that record by sencache_core.tuning.
"""
from __future__ import annotations

from dataclasses import dataclass

import comfy.sample
import comfy.utils
import torch

from ..sencache_core import aggregate_runs
from ..sencache_core import schedule as sched
from ..sencache_core import tuning as T
from ..sencache_core.norms import rms
from .apply import apply_sencache
from .base_schedule import base_sigmas, discards_penultimate, model_shift, shifted_schedules
from .runtime import NODE_DEFAULTS, SenCacheSettings


@dataclass
class CalibrationSample:
    """One calibration run: its seed, the noise it started from, its uncached result and the sensitivity samples
    it measured (sencache_core.calibration.Sample list)."""
    seed: int
    noise: torch.Tensor
    reference: torch.Tensor
    measured: list


def tuning_cost(steps: int, samples: int, candidates: int) -> float:
    """Model evaluations of tune_schedules, in full runs of `steps` steps (for the tooltip and the log)."""
    fracs = T.tune_steps(steps)
    return samples * sum((candidates * b + b) / steps for b in fracs.values())


def tune_schedules(model, positive, negative, latent_image, samples: list[CalibrationSample], steps: int, cfg: float,
                   sampler_name: str, scheduler: str, denoise: float, profile, metadata: dict, latent: dict) -> dict:
    """The "schedule_tuning" record (sencache_core.tuning) for these calibration samples. `profile` (all runs) plans
    the schedules the user will get; each sample's caching run and profile-planned candidate use the profile of the
    other runs (`metadata` names it), so no sample is judged by a profile it helped to measure."""
    base = base_sigmas(model, scheduler, steps, denoise).tolist()
    shifted = shifted_schedules(model, scheduler, denoise)
    own = model_shift(model)
    shifts = tuple(sorted(set(sched.SHIFT_CANDIDATES) | ({own} if own is not None else set())))
    common = dict(denoise=denoise, noise_mask=latent.get("noise_mask"), disable_pbar=True)
    fracs = T.tune_steps(steps)
    n_cand = (len(shifts) if shifted else len(sched.WARPS)) + 1
    pbar = comfy.utils.ProgressBar(max(1, len(samples) * len(fracs) * (n_cand + 1)))
    held_out = [_other_runs_profile(samples, i, metadata, profile) for i in range(len(samples))]
    record = {"version": T.VERSION, "sampler": sampler_name, "scheduler": scheduler, "steps": steps,
              "samples": len(samples), "fractions": {}}
    discard = discards_penultimate(sampler_name)
    for key, b in fracs.items():
        errors: dict = {}
        caching, computed = [], []
        for i, smp in enumerate(samples):
            scale = float(rms(smp.reference.float()))
            cands = sched.candidate_schedules(profile, b, base, shifted, shifts, discard)
            cands[sched.PROFILE_CANDIDATE] = sched.schedule_for(held_out[i], sched.PROFILE_CANDIDATE, b, base,
                                                                discard_penultimate=discard)
            for name, sig in cands.items():
                out = comfy.sample.sample(model, smp.noise, b, cfg, sampler_name, scheduler, positive, negative,
                                          latent_image, sigmas=torch.tensor(sig, dtype=torch.float32), seed=smp.seed,
                                          **common)
                errors.setdefault(name, []).append(T.error_db(float(rms(out.float() - smp.reference.float())), scale))
                pbar.update(1)
            cached, holder = apply_sencache(model, held_out[i],
                                            SenCacheSettings(**NODE_DEFAULTS, target_speedup=steps / b))
            out = comfy.sample.sample(cached, smp.noise, steps, cfg, sampler_name, scheduler, positive, negative,
                                      latent_image, seed=smp.seed, **common)
            caching.append(T.error_db(float(rms(out.float() - smp.reference.float())), scale))
            trace = holder.last_trace
            computed.append(sum(not st.reuse for st in trace.steps) if trace else None)
            pbar.update(1)
        record["fractions"][key] = {"steps": b, "error_db": errors, "caching_db": caching,
                                    "caching_computed": computed}
    return record


def _other_runs_profile(samples: list[CalibrationSample], i: int, metadata: dict, fallback):
    """The profile of every calibration run but the i-th (the whole profile when there is only one run)."""
    others = [s.measured for j, s in enumerate(samples) if j != i and s.measured]
    return aggregate_runs(others, dict(metadata, name=f"{metadata.get('name', 'calibration')} without run {i + 1}")) \
        if others else fallback
