"""The σ schedules ComfyUI's own schedulers give for a model."""
from __future__ import annotations

import comfy.samplers
import torch


def base_sigmas(model, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """The schedule ComfyUI's BasicScheduler gives for these inputs (same arithmetic)."""
    total = steps if denoise >= 1.0 else int(steps / denoise)
    s = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, total).cpu()
    return s[-(steps + 1):]
