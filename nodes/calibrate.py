"""Sensitivity Calibrator: samples like a KSampler and measures α on the sampling trajectory
(sencache_core.calibration) with one extra model evaluation per step, on the positive (cond) branch only: the extra
(cross-σ) pass runs on the cond rows of the batch, not on the whole CFG batch.

Models whose diffusion model takes a list (LTX-2 `LTXAV`: [video] or [video, audio]) are measured on the first part,
the video latent: the part SenCache measures Δx on (nodes/runtime.py says why)."""
from __future__ import annotations

import logging
import math

import torch

import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils

from ..sencache_core import TrajectoryCalibrator, aggregate_runs
from ..sencache_core import schedule as sched
from ..sencache_core.norms import rms
from .runtime import as_parts, find_transformer_options
from .model_info import model_facts

log = logging.getLogger("SenCache")
CAL_KEY = "sencache_calibration"


class CalibrationHolder:
    def __init__(self, channels: int):
        self.channels = channels
        self.runs: list = []
        self.current: TrajectoryCalibrator | None = None
        self.model_sampling = None
        self.full_batch_cross = False      # set when a model refused the cond-rows-only extra pass


def _outer(executor, *args, **kwargs):
    holder: CalibrationHolder = executor.class_obj.model_options["transformer_options"][CAL_KEY]
    holder.current = TrajectoryCalibrator()
    holder.model_sampling = executor.class_obj.model_patcher.model.model_sampling
    try:
        return executor(*args, **kwargs)
    finally:
        holder.runs.append(holder.current.finish())
        holder.current = None


def _cross_timestep(model_sampling, t_arg, sigma: float, sigma_prev: float):
    """The model's own timestep argument for σ_prev, shaped like the one it got for σ (a tensor, or a tuple of them
    such as LTX-2's (video, audio) timesteps)."""
    if isinstance(t_arg, (list, tuple)):
        return type(t_arg)(_cross_timestep(model_sampling, t, sigma, sigma_prev) for t in t_arg)
    t_prev = model_sampling.timestep(torch.tensor([sigma_prev], dtype=torch.float32)).to(t_arg.device, t_arg.dtype)
    if bool((t_arg == t_arg.flatten()[0]).all()):
        return torch.full_like(t_arg, float(t_prev))
    t_now = float(model_sampling.timestep(torch.tensor([sigma], dtype=torch.float32)))
    return t_arg * (float(t_prev) / t_now)     # per-token timesteps (e.g. LTXV masks): linear maps only


def _select_rows(v, batch: int, rows: slice, skip):
    """v with every tensor of batch size `batch` cut to `rows` (inside lists, tuples and dicts too); `skip` (the
    transformer_options dict) and everything else unchanged."""
    if v is skip:
        return v
    if isinstance(v, torch.Tensor):
        return v[rows] if v.ndim >= 1 and v.shape[0] == batch else v
    if isinstance(v, (list, tuple)):
        return type(v)(_select_rows(e, batch, rows, skip) for e in v)
    if isinstance(v, dict):
        return {k: _select_rows(e, batch, rows, skip) for k, e in v.items()}
    return v


def measuring_diffusion_wrapper(executor, *args, **kwargs):
    to = find_transformer_options(args, kwargs)
    holder: CalibrationHolder | None = (to or {}).get(CAL_KEY)
    out = executor(*args, **kwargs)
    if holder is None or holder.current is None or to.get("sigmas") is None:
        return out
    cou = list(to.get("cond_or_uncond") or [0])
    if 0 not in cou:
        return out
    x = as_parts(args[0])[0][0]
    batch = x.shape[0]
    per = batch // len(cou)
    i = cou.index(0)
    rows = slice(i * per, (i + 1) * per)
    sigma = float(to["sigmas"].flatten()[0])
    cal = holder.current
    s_prev = cal.cross_sigma()
    f_cross = None
    if s_prev is not None and s_prev != sigma:
        f_cross = _cross_pass(holder, executor, args, kwargs, to, sigma, s_prev, batch, rows, i)
    cal.record(x[rows, :holder.channels], sigma, as_parts(out)[0][0][rows], f_cross)
    return out


def _cross_pass(holder: CalibrationHolder, executor, args, kwargs, to: dict, sigma: float, s_prev: float,
                batch: int, rows: slice, i: int):
    """The cond rows' output at σ_prev with the input of σ: the model run on those rows only (every batched
    argument cut to them). Should a model refuse the cut batch, the whole batch runs and its cond rows are kept."""
    to2 = dict(to)
    to2["sigmas"] = torch.full_like(to["sigmas"], s_prev)
    t_cross = _cross_timestep(holder.model_sampling, args[1], sigma, s_prev)
    full_args = list(args)
    full_args[1] = t_cross
    full_kwargs = dict(kwargs)
    if "transformer_options" in kwargs:
        full_kwargs["transformer_options"] = to2
    else:
        full_args[max(j for j, a in enumerate(full_args) if a is to)] = to2
    if len(to.get("cond_or_uncond") or [0]) > 1 and not holder.full_batch_cross:
        uuids = list(to.get("uuids") or [])
        to3 = dict(to2, cond_or_uncond=[0], uuids=uuids[i:i + 1] if len(uuids) > i else uuids)
        cut_args = [to3 if a is to2 else _select_rows(a, batch, rows, to2) for a in full_args]
        cut_kwargs = {k: (to3 if v is to2 else _select_rows(v, batch, rows, to2)) for k, v in full_kwargs.items()}
        try:
            return as_parts(executor(*cut_args, **cut_kwargs))[0][0]
        except Exception as e:  # noqa: BLE001  an unusual model: measure as before, on the whole batch
            holder.full_batch_cross = True
            log.warning("SenCache calibration: the cond-rows-only extra pass failed (%s); running it on the whole "
                        "batch for the rest of this calibration", e)
    return as_parts(executor(*full_args, **full_kwargs))[0][0][rows]


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
    if int(steps) < 2 or int(runs) < 1:
        raise ValueError(f"Sensitivity Calibrator: need steps ≥ 2 and runs ≥ 1 (got {steps}, {runs})")


def tune_schedules(model, positive, negative, latent_image, noise, reference, steps: int, cfg: float,
                   sampler_name: str, scheduler: str, denoise: float, profile, latent: dict) -> dict:
    """Sample the same noise with every candidate schedule for fewer steps (sencache_core.schedule.candidate_schedules,
    at each of TUNE_FRACTIONS of `steps`) and with SenCache caching in budget mode at the same fraction (all `steps`,
    about that fraction computed), and compare each with the uncached run of all `steps` (`reference`): RMS
    difference of the final latents. Returns the "schedule_tuning" metadata record."""
    from .apply import apply_sencache
    from .runtime import NODE_DEFAULTS, SenCacheSettings
    from .schedule import base_sigmas
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


def calibrate(model, positive, negative, latent: dict, seed: int, steps: int, cfg: float, sampler_name: str,
              scheduler: str, runs: int, denoise: float = 1.0, tune_schedule: bool = False):
    """Run `runs` samplings (seeds seed, seed+1, ...) with the calibration wrappers; with tune_schedule, also compare
    schedules for fewer steps against the first run (tune_schedules). Returns (latent dict of the first run,
    SensitivityProfile)."""
    check_calibration_inputs(steps, cfg, sampler_name, scheduler, runs, denoise)
    facts = model_facts(model)
    m = model.clone()
    holder = CalibrationHolder(facts["latent_channels"])
    m.model_options.setdefault("transformer_options", {})[CAL_KEY] = holder
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, CAL_KEY, _outer)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, CAL_KEY, measuring_diffusion_wrapper)

    latent_image = comfy.sample.fix_empty_latent_channels(m, latent["samples"])
    pbar = comfy.utils.ProgressBar(runs * steps)
    first = first_noise = None
    for r in range(runs):
        noise = comfy.sample.prepare_noise(latent_image, seed + r, latent.get("batch_index"))
        first_noise = noise if first_noise is None else first_noise
        samples = comfy.sample.sample(m, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                                      denoise=denoise, noise_mask=latent.get("noise_mask"),
                                      callback=lambda *a: pbar.update(1), disable_pbar=True, seed=seed + r)
        if first is None:
            first = samples
    ms = m.model.model_sampling
    meta = {"name": f"calibration seed {seed}..{seed + runs - 1}", "fingerprint": facts["fingerprint"],
            "latent_channels": facts["latent_channels"], "latent_shape": list(latent_image.shape[1:]),
            "model_class": facts["model_class"], "sampler": sampler_name, "scheduler": scheduler, "steps": steps,
            "cfg": cfg, "denoise": denoise, "shift": float(getattr(ms, "shift", 1.0)), "seeds": [seed, seed + runs - 1],
            "branch": "cond"}
    profile = aggregate_runs(holder.runs, meta)
    if tune_schedule:
        profile.metadata["schedule_tuning"] = tune_schedules(model, positive, negative, latent_image, first_noise,
                                                             first, steps, cfg, sampler_name, scheduler, denoise,
                                                             profile, latent)
        log.info("SenCache calibration: %s", sched.tuning_summary(profile.metadata["schedule_tuning"]))
    out = latent.copy()
    out["samples"] = first
    out.pop("noise_mask", None)
    log.info("SenCache calibration: %s", profile.describe())
    return out, profile
