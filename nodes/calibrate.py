"""Sensitivity Calibrator: samples like a KSampler and measures α on the sampling trajectory with one extra model
evaluation per step (the measuring wrappers of nodes/measure.py)."""
from __future__ import annotations

import logging
import math

import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils

from ..sencache_core import aggregate_runs
from ..sencache_core import tuning as tuning_records
from .measure import CAL_KEY, CalibrationHolder, measuring_diffusion_wrapper, outer_sample_wrapper
from .model_info import model_facts
from .profiles import is_whole
from .tuning import CalibrationSample, tune_schedules

log = logging.getLogger("SenCache")


def check_calibration_inputs(steps, cfg, sampler_name, scheduler, runs, denoise) -> None:
    """Refuse what ComfyUI's sampler would silently replace or misread, before any model evaluation."""
    if sampler_name not in comfy.samplers.KSampler.SAMPLERS:
        raise ValueError(f"Sensitivity Calibrator: unknown sampler {sampler_name!r}; "
                         f"one of {', '.join(comfy.samplers.KSampler.SAMPLERS)}")
    if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise ValueError(f"Sensitivity Calibrator: unknown scheduler {scheduler!r}; "
                         f"one of {', '.join(comfy.samplers.KSampler.SCHEDULERS)}")
    for name, v, lo in (("cfg", cfg, 0.0), ("denoise", denoise, 0.0)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= lo):
            raise ValueError(f"Sensitivity Calibrator: {name} must be a finite number ≥ {lo} (got {v})")
    if not (0 < denoise <= 1):
        raise ValueError(f"Sensitivity Calibrator: denoise must lie in (0, 1] (got {denoise})")
    if not (is_whole(steps) and is_whole(runs) and steps >= 2 and runs >= 1):
        raise ValueError(f"Sensitivity Calibrator: need whole numbers steps ≥ 2 and runs ≥ 1 (got {steps}, {runs})")


def calibrate(model, positive, negative, latent: dict, seed: int, steps: int, cfg: float, sampler_name: str,
              scheduler: str, runs: int, denoise: float = 1.0, tune_schedule: bool = False):
    """Run `runs` samplings (seeds seed, seed+1, ...) with the calibration wrappers; with tune_schedule, also compare
    caching with schedules for fewer steps on every run (nodes.tuning). Returns (latent dict of the first run,
    SensitivityProfile)."""
    check_calibration_inputs(steps, cfg, sampler_name, scheduler, runs, denoise)
    facts = model_facts(model)
    m = model.clone()
    holder = CalibrationHolder(facts["latent_channels"])
    m.model_options.setdefault("transformer_options", {})[CAL_KEY] = holder
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, CAL_KEY, outer_sample_wrapper)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, CAL_KEY, measuring_diffusion_wrapper)

    latent_image = comfy.sample.fix_empty_latent_channels(m, latent["samples"])
    pbar = comfy.utils.ProgressBar(runs * steps)
    done = []                                  # (seed, noise, result) of each run
    for r in range(runs):
        noise = comfy.sample.prepare_noise(latent_image, seed + r, latent.get("batch_index"))
        samples = comfy.sample.sample(m, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                                      denoise=denoise, noise_mask=latent.get("noise_mask"),
                                      callback=lambda *a: pbar.update(1), disable_pbar=True, seed=seed + r)
        done.append((seed + r, noise if tune_schedule else None, samples if tune_schedule or r == 0 else None))
    first = done[0][2]
    ms = m.get_model_object("model_sampling")
    meta = {"name": f"calibration seed {seed}..{seed + runs - 1}", "fingerprint": facts["fingerprint"],
            "latent_channels": facts["latent_channels"], "latent_shape": list(latent_image.shape[1:]),
            "model_class": facts["model_class"], "sampler": sampler_name, "scheduler": scheduler, "steps": steps,
            "cfg": cfg, "denoise": denoise, "shift": float(getattr(ms, "shift", 1.0)), "seeds": [seed, seed + runs - 1],
            "branch": "cond"}
    profile = aggregate_runs(holder.runs, meta)
    if tune_schedule:
        runs_done = [CalibrationSample(sd, noise, result, measured)
                     for (sd, noise, result), measured in zip(done, holder.runs)]
        profile.metadata["schedule_tuning"] = tune_schedules(model, positive, negative, latent_image, runs_done, steps,
                                                             cfg, sampler_name, scheduler, denoise, profile, meta,
                                                             latent)
        log.info("SenCache calibration: %s", tuning_records.tuning_summary(profile.metadata["schedule_tuning"]))
    out = latent.copy()
    out["samples"] = first
    out.pop("noise_mask", None)
    log.info("SenCache calibration: %s", profile.describe())
    return out, profile
