"""Run the real ComfyUI sampler on tiny models, for tests, the demo and benchmarks."""
from __future__ import annotations

import torch


def text_cond(seed: int, tokens: int = 4, width: int = 4096, batch: int = 1, extra: dict | None = None):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, width, generator=g), dict(extra or {})]]


def wan_latent(frames: int = 3, h: int = 8, w: int = 8, channels: int = 16, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, channels, frames, h, w)


def ltxv_conds(seed: int, tokens: int = 4):
    pos = text_cond(seed, tokens)
    neg = text_cond(seed + 1000, tokens)
    for c in (pos, neg):
        c[0][1]["attention_mask"] = torch.ones(1, tokens, dtype=torch.long)
    return pos, neg


def sample(model, positive, negative, latent: torch.Tensor, seed: int = 0, steps: int = 8, cfg: float = 5.0,
           sampler_name: str = "euler", scheduler: str = "simple", denoise: float = 1.0,
           start_step=None, last_step=None, force_full_denoise=False, disable_noise=False):
    """KSampler(Advanced) semantics through comfy.sample.sample (the real sampler path)."""
    with torch.inference_mode():        # as ComfyUI's executor runs every node
        return _sample(model, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler, denoise,
                       start_step, last_step, force_full_denoise, disable_noise)


def _sample(model, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler, denoise,
            start_step, last_step, force_full_denoise, disable_noise):
    import comfy.sample
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = torch.zeros_like(latent_image) if disable_noise else comfy.sample.prepare_noise(latent_image, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                               denoise=denoise, start_step=start_step, last_step=last_step,
                               force_full_denoise=force_full_denoise, disable_pbar=True, seed=seed)
