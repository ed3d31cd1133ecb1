"""Facts about a loaded ComfyUI model that SenCache needs (generic: no per-model code)."""
from __future__ import annotations

from ..sencache_core import model_fingerprint


def model_facts(model) -> dict:
    base = model.model
    config = dict(getattr(base.model_config, "unet_config", {}) or {})
    config["model_class"] = type(base).__name__
    return {"latent_channels": int(base.latent_format.latent_channels),
            "model_class": type(base).__name__,
            "fingerprint": model_fingerprint(config, base.diffusion_model.state_dict())}
