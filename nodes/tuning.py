"""Caching or fewer steps: the Sensitivity Calibrator's `tune_schedule` comparison, run after its calibration."""
from __future__ import annotations

import comfy.sample
import torch

from ..sencache_core import schedule as sched
from ..sencache_core.norms import rms
from .apply import apply_sencache
from .runtime import NODE_DEFAULTS, SenCacheSettings
from .base_schedule import base_sigmas


def tune_schedules(model, positive, negative, latent_image, noise, reference, steps: int, cfg: float,
                   sampler_name: str, scheduler: str, denoise: float, profile, latent: dict) -> dict:
    """Sample the same noise with every candidate schedule for fewer steps (sencache_core.schedule.candidate_schedules,
    at each of TUNE_FRACTIONS of `steps`) and with SenCache caching in budget mode at the same fraction (all `steps`,
    about that fraction computed), and compare each with the uncached run of all `steps` (`reference`): RMS
    difference of the final latents. Returns the "schedule_tuning" metadata record."""
    base = base_sigmas(model, scheduler, steps, denoise).tolist()
    common = dict(denoise=denoise, noise_mask=latent.get("noise_mask"), disable_pbar=True)
    fracs = {}
    for key, b in sched.tune_steps(steps).items():
        errors = {}
        for name, sig in sched.candidate_schedules(profile, b, base).items():
            out = comfy.sample.sample(model, noise, b, cfg, sampler_name, scheduler, positive, negative, latent_image,
                                      sigmas=torch.tensor(sig, dtype=torch.float32), **common)
            errors[name] = float(rms(out.float() - reference.float()))
        cached, holder = apply_sencache(model, profile, SenCacheSettings(**NODE_DEFAULTS, target_speedup=steps / b))
        out = comfy.sample.sample(cached, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                                  **common)
        trace = holder.last_trace
        caching = {"error": float(rms(out.float() - reference.float())),
                   "computed": sum(not st.reuse for st in trace.steps) if trace else None}
        fracs[key] = {"steps": b, "error": errors, "caching": caching, "runs": 1}
    return {"sampler": sampler_name, "scheduler": scheduler, "steps": steps, "fractions": fracs}
