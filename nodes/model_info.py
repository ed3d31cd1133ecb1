"""Facts about a loaded ComfyUI model that SenCache needs (generic: no per-model code)."""
from __future__ import annotations

from ..sencache_core import model_fingerprint

# ComfyUI model classes (comfy.model_base) SenCache is built and tested for -> the family users know them by.
# Any other class takes the same generic path (it needs only the host's wrapper hooks); SenCache says so once.
KNOWN_MODEL_CLASSES = {
    "WAN21": "Wan 2.1 (T2V, I2V) and the Wan 2.2 A14B experts",
    "WAN22": "Wan 2.2 TI2V 5B",
    "LTXV": "LTX-Video 0.9.x",
    "LTXAV": "LTX-2 (audio + video)",
    "CogVideoX": "CogVideoX",
}


def model_facts(model) -> dict:
    base = model.model
    config = dict(getattr(base.model_config, "unet_config", {}) or {})
    config["model_class"] = type(base).__name__
    return {"latent_channels": int(base.latent_format.latent_channels),
            "model_class": type(base).__name__,
            "family": KNOWN_MODEL_CLASSES.get(type(base).__name__),
            "fingerprint": model_fingerprint(config, base.diffusion_model.state_dict())}


def unknown_class_message(facts: dict) -> str | None:
    """The note for a model class SenCache does not list, naming it; None for a listed one."""
    if facts.get("family"):
        return None
    return (f"model class {facts['model_class']} is not one SenCache is tested with "
            f"({', '.join(KNOWN_MODEL_CLASSES)}); it runs the generic path: calibrate a profile on this model with the "
            "Sensitivity Calibrator, and check the output at ε = 0 against the uncached run once")
