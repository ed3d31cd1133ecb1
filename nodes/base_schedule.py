"""The σ schedules ComfyUI's own schedulers give for a model, at its own shift or another."""
from __future__ import annotations

import copy

import comfy.model_sampling
import comfy.samplers
import torch


def _sigmas(model_sampling, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    total = steps if denoise >= 1.0 else int(steps / denoise)
    s = comfy.samplers.calculate_sigmas(model_sampling, scheduler, total).cpu()
    return s[-(steps + 1):]


def base_sigmas(model, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """The schedule ComfyUI's BasicScheduler gives for these inputs (same arithmetic)."""
    return _sigmas(model.get_model_object("model_sampling"), scheduler, steps, denoise)


def model_shift(model) -> float | None:
    """The shift of a flow model's sampling (ModelSamplingSD3 and the like), None for models without one."""
    ms = model.get_model_object("model_sampling")
    return float(ms.shift) if isinstance(ms, comfy.model_sampling.ModelSamplingDiscreteFlow) else None


def shifted_schedules(model, scheduler: str, denoise: float = 1.0):
    """For a flow model: a function (shift, steps) -> the σ list BasicScheduler gives after ModelSamplingSD3 with
    that shift (what re-tuning the shift gives). None for models without a shift."""
    if model_shift(model) is None:
        return None
    ms = model.get_model_object("model_sampling")

    def at(shift: float, steps: int) -> list[float]:
        other = copy.deepcopy(ms)
        other.set_parameters(shift=float(shift), multiplier=ms.multiplier)
        return _sigmas(other, scheduler, steps, denoise).tolist()
    return at


def discards_penultimate(sampler_name: str | None) -> bool:
    """Whether KSampler runs this sampler on a schedule of one step more with its penultimate σ dropped."""
    return sampler_name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
