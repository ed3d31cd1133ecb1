"""The demo workflow as an API-format ComfyUI prompt graph (what the frontend's "Queue" sends to /prompt), reusable
by the demo (bench/demo.py), the tests and whoever writes the UI-format example workflow.

    UNETLoader(sencache_demo_wan.safetensors) -> ModelSamplingSD3(shift 8) -> [SenCache(profile)] -> KSampler
    SenCacheDemoPrompt(text) -> positive;  ConditioningZeroOut(positive) -> negative
    EmptyHunyuanLatentVideo(128 x 128, length 29) = latent [1, 16, 8, 16, 16]
    KSampler(uni_pc, simple, 30 steps, cfg 6)  = ComfyUI's Wan 2.1 template settings
    SenCacheDemoDecode(upscale 4) -> SaveImage (frames) + SaveAnimatedWEBP (preview)
    [visualize: SenCacheVisualizer(SenCache MODEL, sampled LATENT) -> SaveImage (the run's plot)]

Node ids are stable strings so callers can read outputs: see NODE_* below.
"""
from __future__ import annotations

WEIGHTS_NAME = "sencache_demo_wan.safetensors"
PROFILE_NAME = "sencache_demo_wan_profile.safetensors"
NODE_SAMPLER = "8"
NODE_FRAMES = "10"
NODE_WEBP = "11"
NODE_CALIBRATOR = "6"
NODE_VISUALIZER = "15"
NODE_PLOT = "16"

# The SenCache node's inputs (besides model/profile) the demo uses; eps values in RMS units of the model output.
SENCACHE_DEFAULTS = dict(eps_main=0.1, eps_start=0.02, eps_switch_percent=0.2, max_consecutive_reuse=3,
                         reuse_start_percent=0.0, reuse_end_percent=1.0, protect_final_step=True,
                         use_high_percentile=False, reuse_mode="output_extrapolated", target_speedup=0.0)


def demo_graph(text: str = "red circle and blue square on green", seed: int = 42, steps: int = 30, cfg: float = 6.0,
               sampler: str = "uni_pc", scheduler: str = "simple", shift: float = 8.0, sencache: dict | None = None,
               profile: str | None = PROFILE_NAME, calibrate: dict | None = None, prefix: str = "sencache_demo",
               upscale: int = 4, weights: str = WEIGHTS_NAME, visualize: bool = False) -> dict:
    """API-format graph. sencache=None: plain (uncached) sampling. sencache=dict of SenCache inputs (missing keys
    from SENCACHE_DEFAULTS): the model goes through SenCache with a profile from SenCacheLoadProfile(`profile`), or,
    when `calibrate` is given (dict of SenCacheCalibrator inputs: seed, runs, text), from a Sensitivity Calibrator
    node run on its own seed(s) with the same sampler settings. visualize (with sencache): add the SenCache
    Visualizer after the sampler and save its plot."""
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": weights, "weight_dtype": "default"}},
        "2": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": shift}},
        "3": {"class_type": "SenCacheDemoPrompt", "inputs": {"text": text}},
        "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
        "5": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 128, "height": 128, "length": 29,
                                                                  "batch_size": 1}},
        NODE_SAMPLER: {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
            "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "9": {"class_type": "SenCacheDemoDecode", "inputs": {"samples": [NODE_SAMPLER, 0], "upscale": upscale}},
        NODE_FRAMES: {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": f"{prefix}_frames"}},
        NODE_WEBP: {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["9", 0], "filename_prefix": prefix, "fps": 8.0,
                                                                 "lossless": True, "quality": 100, "method": "default"}},
    }
    if sencache is not None:
        inputs = dict(SENCACHE_DEFAULTS, **sencache)
        if calibrate is not None:
            c = dict(calibrate)
            g["12"] = {"class_type": "SenCacheDemoPrompt", "inputs": {"text": c.pop("text", text)}}
            g["13"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["12", 0]}}
            g[NODE_CALIBRATOR] = {"class_type": "SenCacheCalibrator", "inputs": {
                "model": ["2", 0], "positive": ["12", 0], "negative": ["13", 0], "latent_image": ["5", 0],
                "seed": c.get("seed", 5000), "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
                "runs": c.get("runs", 2), "denoise": 1.0, "save_as": c.get("save_as", "")}}
            prof = [NODE_CALIBRATOR, 1]
        else:
            g[NODE_CALIBRATOR] = {"class_type": "SenCacheLoadProfile", "inputs": {"profile_name": profile, "npz_preset": "auto"}}
            prof = [NODE_CALIBRATOR, 0]
        g["7"] = {"class_type": "SenCacheApply", "inputs": {"model": ["2", 0], "profile": prof, **inputs}}
        g[NODE_SAMPLER]["inputs"]["model"] = ["7", 0]
        if visualize:
            g[NODE_VISUALIZER] = {"class_type": "SenCacheVisualizer", "inputs": {"model": ["7", 0],
                                                                               "latent": [NODE_SAMPLER, 0]}}
            g[NODE_PLOT] = {"class_type": "SaveImage", "inputs": {"images": [NODE_VISUALIZER, 0],
                                                                  "filename_prefix": f"{prefix}_plot"}}
    return g


def calibration_graph(text: str = "yellow triangle and white circle on blue", seed: int = 5000, runs: int = 4,
                      steps: int = 30, cfg: float = 6.0, sampler: str = "uni_pc", scheduler: str = "simple",
                      shift: float = 8.0, save_as: str = "sencache_demo_wan_profile", weights: str = WEIGHTS_NAME) -> dict:
    """UNETLoader -> ModelSamplingSD3 -> SenCacheCalibrator (runs seeds seed..seed+runs-1) -> SenCacheSaveProfile."""
    g = demo_graph(text, seed, steps, cfg, sampler, scheduler, shift, sencache={}, calibrate={"seed": seed, "runs": runs},
                   weights=weights)
    keep = {"1", "2", "5", "12", "13", NODE_CALIBRATOR}
    g = {k: v for k, v in g.items() if k in keep}
    g["12"]["inputs"]["text"] = text
    g["14"] = {"class_type": "SenCacheSaveProfile", "inputs": {"profile": [NODE_CALIBRATOR, 1], "filename_prefix": save_as}}
    return g
