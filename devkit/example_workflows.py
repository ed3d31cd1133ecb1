"""The example workflows of example_workflows/ (UI format, listed by ComfyUI under Browse Templates), built from
/object_info so their widget values always match the nodes. Regenerate after a node's inputs change:

    .dev/venv/bin/python -m devkit.example_workflows            # starts the real ComfyUI once for /object_info
    .dev/venv/bin/python -m devkit.example_workflows info.json  # or reads a saved /object_info
    .dev/venv/bin/python -m devkit.example_workflows --demo-frames  # demo thumbnail + 8 frames the demo model renders
    SENCACHE_COMFYUI=.dev/ComfyUI-0.18.1 PYTHONPATH=.dev/site-0.18.1 .dev/venv/bin/python -m devkit.example_workflows
                                                                # the workflows built on 0.18.1 (BUILT_ON)
Each run writes only the workflows built on the running host's version.

Each workflow: standard ComfyUI nodes plus this pack's, and MarkdownNote nodes saying which model files go where.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import time

from .workflow import MODE_NEVER, Graph, render_thumbnail, save

OUT = pathlib.Path(__file__).resolve().parent.parent / "example_workflows"
SC = "#2a5f45"          # colour of SenCache nodes in the graphs

SENCACHE_HOWTO = (
    "### SenCache\n"
    "**Load Profile → SenCache → sampler.** `target_speedup` (default 2.0) sets how many model evaluations a run "
    "computes (about steps / target); SenCache picks ε and K from the profile so that the reused ones are those the "
    "profile predicts to change least. Set `target_speedup` to 0 to use `eps_main` (the reuse threshold, in the "
    "model's output units) and `max_consecutive_reuse` (K) directly.\n\n"
    "Each run logs one line (computed/reused evaluations, time); the node shows the run as a strip.\n\n"
    "Best results come from a profile of **your** model/LoRA/resolution: see the workflow "
    "`sencache_calibrate_save_load_apply`.")


def _wan21_t2v_graph(g: Graph, sencache, prefix: str) -> dict:
    """ComfyUI's Wan 2.1 T2V 1.3B graph with SenCache between ModelSamplingSD3 and the KSampler. `sencache(g)` adds
    the SenCache node (and what feeds its profile) and returns (SenCache node, profile node or None)."""
    unet = g.node("UNETLoader", (0, 0), unet_name="wan2.1_t2v_1.3B_fp16.safetensors", weight_dtype="default")
    ms = g.node("ModelSamplingSD3", (0, 130), shift=8.0)
    clip = g.node("CLIPLoader", (0, 260), clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan")
    vae = g.node("VAELoader", (0, 420), vae_name="wan_2.1_vae.safetensors")
    pos = g.node("CLIPTextEncode", (360, 0), (400, 180), title="CLIP Text Encode (Positive Prompt)",
                 text="A red fox trotting through fresh snow in a birch forest, morning light, cinematic.")
    neg = g.node("CLIPTextEncode", (360, 210), (400, 180), title="CLIP Text Encode (Negative Prompt)",
                 text="blurry, low quality, static, distorted, watermark, text")
    lat = g.node("EmptyHunyuanLatentVideo", (360, 420), width=832, height=480, length=33, batch_size=1)
    sc, prof = sencache(g)
    ks = g.node("KSampler", (1160, 0), seed=42, steps=30, cfg=6.0, sampler_name="uni_pc", scheduler="simple", denoise=1.0)
    dec = g.node("VAEDecode", (1520, 0), (220, 80))
    cv = g.node("CreateVideo", (1520, 120), (220, 100), fps=16.0)
    sv = g.node("SaveVideo", (1520, 260), (300, 140), filename_prefix=prefix)
    g.link(unet, 0, ms, "model"); g.link(ms, 0, sc, "model")
    if prof is not None:
        g.link(prof, 0, sc, "profile")
    g.link(clip, 0, pos, "clip"); g.link(clip, 0, neg, "clip")
    g.link(sc, 0, ks, "model"); g.link(pos, 0, ks, "positive"); g.link(neg, 0, ks, "negative"); g.link(lat, 0, ks, "latent_image")
    g.link(ks, 0, dec, "samples"); g.link(vae, 0, dec, "vae"); g.link(dec, 0, cv, "images"); g.link(cv, 0, sv, "video")
    return g.to_json()


def wan21_t2v(info) -> dict:
    g = Graph(info)
    g.note("### Wan 2.1 text-to-video (1.3B) with SenCache\n\nModel files (ComfyUI folder names):\n"
           "- `models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors`\n"
           "- `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`\n"
           "- `models/vae/wan_2.1_vae.safetensors`\n"
           "- `models/sencache/sensitivity_wan21.npz` — the reference sensitivity file of the SenCache paper "
           "(vita-epfl/SenCache, `Wan2.1/`), or your own profile from the calibration workflow.\n\n"
           "The 14B T2V works the same way (its own profile; calibrate it).", (0, -330), (520, 300))
    g.note(SENCACHE_HOWTO, (560, -330), (520, 300))
    def sencache(g):
        prof = g.node("SenCacheLoadProfile", (800, 0), color=SC, profile_name="sensitivity_wan21.npz", npz_preset="auto")
        return g.node("SenCacheApply", (800, 130), color=SC), prof
    return _wan21_t2v_graph(g, sencache, "video/sencache_wan21_t2v")


def quickstart(info) -> dict:
    g = Graph(info)
    g.note("### Quick start: one SenCache node, no profile (Wan 2.1 T2V 1.3B)\n\n"
           "**Run it twice.** SenCache has no profile connected, so it learns one from your own runs: the first run "
           "of a model at a latent size (resolution, frame count) and sampler family computes every step (the same "
           "video as without SenCache), measures the model's sensitivities on the way (one extra model evaluation "
           "per step: up to twice the time of a plain run) and stores the profile in `models/sencache/learned/`. The second run and "
           "every later one find that profile and reuse model evaluations. The node's strip says which: "
           "\"learning the profile (run 1 of 1)\" or \"using learned profile …\".\n\n"
           "Another checkpoint, a LoRA, another resolution or an ancestral/SDE sampler is noticed and learned once "
           "more (one run). `learning_runs` > 1 learns over more runs before reusing.\n\n"
           "Model files (ComfyUI folder names):\n"
           "- `models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors`\n"
           "- `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`\n"
           "- `models/vae/wan_2.1_vae.safetensors`", (0, -380), (620, 350))
    g.note(SENCACHE_HOWTO.replace("**Load Profile → SenCache → sampler.** ", "**SenCache → sampler.** "),
           (660, -380), (520, 350))
    return _wan21_t2v_graph(g, lambda g: (g.node("SenCacheApply", (800, 0), color=SC,
                                                 title="SenCache (learns its profile)"), None),
                            "video/sencache_quickstart")


def wan21_i2v(info) -> dict:
    g = Graph(info)
    g.note("### Wan 2.1 image-to-video (14B, 480p) with SenCache\n\nModel files:\n"
           "- `models/diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors`\n"
           "- `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`\n"
           "- `models/vae/wan_2.1_vae.safetensors`\n"
           "- `models/clip_vision/clip_vision_h.safetensors`\n"
           "- `models/sencache/sensitivity_wan21.npz` (the reference file was measured on Wan 2.1 **T2V**; for I2V "
           "calibrate your own profile with the calibration workflow, feeding the Calibrator the conditioning and "
           "latent of WanImageToVideo).\n\nPut your start image in `ComfyUI/input/`.", (1160, 440), (660, 300))
    g.note(SENCACHE_HOWTO, (1160, 780), (660, 190))
    unet = g.node("UNETLoader", (0, 0), unet_name="wan2.1_i2v_480p_14B_fp16.safetensors", weight_dtype="default")
    ms = g.node("ModelSamplingSD3", (0, 130), shift=8.0)
    clip = g.node("CLIPLoader", (0, 260), clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan")
    vae = g.node("VAELoader", (0, 420), vae_name="wan_2.1_vae.safetensors")
    cvl = g.node("CLIPVisionLoader", (0, 530), clip_name="clip_vision_h.safetensors")
    img = g.node("LoadImage", (0, 650), (320, 320), image="example.png")
    pos = g.node("CLIPTextEncode", (360, 0), (400, 180), title="CLIP Text Encode (Positive Prompt)",
                 text="The cat slowly turns its head towards the camera and blinks.")
    neg = g.node("CLIPTextEncode", (360, 210), (400, 180), title="CLIP Text Encode (Negative Prompt)",
                 text="blurry, low quality, static, distorted, watermark, text")
    cve = g.node("CLIPVisionEncode", (360, 530), crop="none")
    i2v = g.node("WanImageToVideo", (360, 660), width=832, height=480, length=33, batch_size=1)
    prof = g.node("SenCacheLoadProfile", (800, 0), color=SC, profile_name="sensitivity_wan21.npz", npz_preset="auto")
    sc = g.node("SenCacheApply", (800, 130), color=SC)
    ks = g.node("KSampler", (1160, 0), seed=42, steps=30, cfg=6.0, sampler_name="uni_pc", scheduler="simple", denoise=1.0)
    dec = g.node("VAEDecode", (1520, 0), (220, 80))
    cv = g.node("CreateVideo", (1520, 120), (220, 100), fps=16.0)
    sv = g.node("SaveVideo", (1520, 260), (300, 140), filename_prefix="video/sencache_wan21_i2v")
    g.link(unet, 0, ms, "model"); g.link(ms, 0, sc, "model"); g.link(prof, 0, sc, "profile")
    g.link(clip, 0, pos, "clip"); g.link(clip, 0, neg, "clip")
    g.link(cvl, 0, cve, "clip_vision"); g.link(img, 0, cve, "image")
    g.link(pos, 0, i2v, "positive"); g.link(neg, 0, i2v, "negative"); g.link(vae, 0, i2v, "vae")
    g.link(cve, 0, i2v, "clip_vision_output"); g.link(img, 0, i2v, "start_image")
    g.link(sc, 0, ks, "model"); g.link(i2v, 0, ks, "positive"); g.link(i2v, 1, ks, "negative"); g.link(i2v, 2, ks, "latent_image")
    g.link(ks, 0, dec, "samples"); g.link(vae, 0, dec, "vae"); g.link(dec, 0, cv, "images"); g.link(cv, 0, sv, "video")
    return g.to_json()


def wan22_a14b(info) -> dict:
    g = Graph(info)
    g.note("### Wan 2.2 A14B text-to-video: two experts, two SenCache nodes\n\nModel files:\n"
           "- `models/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors`\n"
           "- `models/diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors`\n"
           "- `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`\n"
           "- `models/vae/wan_2.1_vae.safetensors` (A14B uses the Wan 2.1 VAE)\n"
           "- `models/sencache/wan22_a14b_high_noise_00001.safetensors`, `wan22_a14b_low_noise_00001.safetensors`: "
           "one profile **per expert**. Make them with the calibration workflow: once with the high-noise model "
           "(`save_as` = wan22_a14b_high_noise), once with the low-noise model.\n\n"
           "The two KSamplerAdvanced split the 20 steps at step 10 as in ComfyUI's Wan 2.2 template. SenCache works in "
           "σ, so each expert's cache and reuse count start fresh on its part of the schedule; the high-noise part "
           "gets no reuse in its first step and the low-noise part none in its last (protect_final_step).",
           (1520, 420), (560, 540))
    te = g.node("CLIPLoader", (0, 0), clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan")
    vae = g.node("VAELoader", (0, 150), vae_name="wan_2.1_vae.safetensors")
    pos = g.node("CLIPTextEncode", (0, 260), (400, 180), title="CLIP Text Encode (Positive Prompt)",
                 text="A paper boat sails down a rain-filled street gutter, close-up, shallow depth of field.")
    neg = g.node("CLIPTextEncode", (0, 470), (400, 180), title="CLIP Text Encode (Negative Prompt)",
                 text="blurry, low quality, static, distorted, watermark, text")
    lat = g.node("EmptyHunyuanLatentVideo", (0, 680), width=832, height=480, length=33, batch_size=1)
    hi = g.node("UNETLoader", (440, 0), title="Load Diffusion Model (high noise)",
                unet_name="wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", weight_dtype="default")
    lo = g.node("UNETLoader", (440, 490), title="Load Diffusion Model (low noise)",
                unet_name="wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", weight_dtype="default")
    mhi = g.node("ModelSamplingSD3", (440, 130), shift=8.0)
    mlo = g.node("ModelSamplingSD3", (440, 620), shift=8.0)
    phi = g.node("SenCacheLoadProfile", (800, 0), color=SC, title="Load Profile (high noise)",
                 profile_name="wan22_a14b_high_noise_00001.safetensors", npz_preset="auto")
    plo = g.node("SenCacheLoadProfile", (800, 490), color=SC, title="Load Profile (low noise)",
                 profile_name="wan22_a14b_low_noise_00001.safetensors", npz_preset="auto")
    shi = g.node("SenCacheApply", (800, 130), color=SC, title="SenCache (high noise)")
    slo = g.node("SenCacheApply", (800, 620), color=SC, title="SenCache (low noise)")
    khi = g.node("KSamplerAdvanced", (1160, 0), title="KSampler (high noise, steps 0-10)", add_noise="enable",
                 noise_seed=42, steps=20, cfg=3.5, sampler_name="euler", scheduler="simple", start_at_step=0,
                 end_at_step=10, return_with_leftover_noise="enable")
    klo = g.node("KSamplerAdvanced", (1520, 0), title="KSampler (low noise, steps 10-20)", add_noise="disable",
                 noise_seed=0, steps=20, cfg=3.5, sampler_name="euler", scheduler="simple", start_at_step=10,
                 end_at_step=10000, return_with_leftover_noise="disable")
    dec = g.node("VAEDecode", (1160, 410), (220, 80))
    cv = g.node("CreateVideo", (1160, 530), (220, 100), fps=16.0)
    sv = g.node("SaveVideo", (1160, 670), (300, 140), filename_prefix="video/sencache_wan22_a14b")
    g.link(te, 0, pos, "clip"); g.link(te, 0, neg, "clip")
    g.link(hi, 0, mhi, "model"); g.link(lo, 0, mlo, "model")
    g.link(mhi, 0, shi, "model"); g.link(phi, 0, shi, "profile"); g.link(mlo, 0, slo, "model"); g.link(plo, 0, slo, "profile")
    for k in (khi, klo):
        g.link(pos, 0, k, "positive"); g.link(neg, 0, k, "negative")
    g.link(shi, 0, khi, "model"); g.link(lat, 0, khi, "latent_image")
    g.link(slo, 0, klo, "model"); g.link(khi, 0, klo, "latent_image")
    g.link(klo, 0, dec, "samples"); g.link(vae, 0, dec, "vae"); g.link(dec, 0, cv, "images"); g.link(cv, 0, sv, "video")
    return g.to_json()


def ltxv(info) -> dict:
    g = Graph(info)
    g.note("### LTX-Video text-to-video with SenCache\n\nModel files:\n"
           "- `models/checkpoints/ltx-video-2b-v0.9.5.safetensors` (model + VAE in one file)\n"
           "- `models/text_encoders/t5xxl_fp16.safetensors`\n"
           "- `models/sencache/sensitivity_ltx.npz` — the reference sensitivity file (vita-epfl/SenCache, "
           "`LTX-Video/`, measured on LTX-Video 0.9.1; Load Profile converts it with the `ltx091` preset), or your "
           "own profile from the calibration workflow (recommended for other LTX versions).\n\n"
           "SenCache sits between the model and SamplerCustom; LTXVScheduler's σ schedule is used as is.",
           (0, -310), (560, 280))
    g.note(SENCACHE_HOWTO, (600, -310), (520, 280))
    ck = g.node("CheckpointLoaderSimple", (0, 0), ckpt_name="ltx-video-2b-v0.9.5.safetensors")
    te = g.node("CLIPLoader", (0, 150), clip_name="t5xxl_fp16.safetensors", type="ltxv")
    pos = g.node("CLIPTextEncode", (360, 0), (400, 180), title="CLIP Text Encode (Positive Prompt)",
                 text="A lighthouse on a rocky coast at dusk, waves crashing, the beam sweeping through light fog.")
    neg = g.node("CLIPTextEncode", (360, 210), (400, 180), title="CLIP Text Encode (Negative Prompt)",
                 text="low quality, worst quality, deformed, distorted, disfigured, motion smear, motion artifacts")
    cond = g.node("LTXVConditioning", (360, 420), frame_rate=25.0)
    lat = g.node("EmptyLTXVLatentVideo", (0, 300), width=768, height=512, length=97, batch_size=1)
    sched = g.node("LTXVScheduler", (360, 560), steps=30, max_shift=2.05, base_shift=0.95, stretch=True, terminal=0.1)
    samp = g.node("KSamplerSelect", (0, 490), sampler_name="euler")
    prof = g.node("SenCacheLoadProfile", (800, 0), color=SC, profile_name="sensitivity_ltx.npz", npz_preset="auto")
    sc = g.node("SenCacheApply", (800, 130), color=SC)
    sc_ = g.node("SamplerCustom", (1160, 0), add_noise=True, noise_seed=42, cfg=3.0)
    dec = g.node("VAEDecode", (1520, 0), (220, 80))
    cv = g.node("CreateVideo", (1520, 120), (220, 100), fps=25.0)
    sv = g.node("SaveVideo", (1520, 260), (300, 140), filename_prefix="video/sencache_ltxv")
    g.link(te, 0, pos, "clip"); g.link(te, 0, neg, "clip")
    g.link(pos, 0, cond, "positive"); g.link(neg, 0, cond, "negative")
    g.link(lat, 0, sched, "latent")
    g.link(ck, 0, sc, "model"); g.link(prof, 0, sc, "profile")
    g.link(sc, 0, sc_, "model"); g.link(cond, 0, sc_, "positive"); g.link(cond, 1, sc_, "negative")
    g.link(samp, 0, sc_, "sampler"); g.link(sched, 0, sc_, "sigmas"); g.link(lat, 0, sc_, "latent_image")
    g.link(sc_, 0, dec, "samples"); g.link(ck, 2, dec, "vae"); g.link(dec, 0, cv, "images"); g.link(cv, 0, sv, "video")
    return g.to_json()


def ltx2(info) -> dict:
    """LTX-2 (ComfyUI class LTXAV) text-to-video; needs ComfyUI 0.18 or later (built from its /object_info)."""
    g = Graph(info)
    g.note("### LTX-2 text-to-video with SenCache — **ComfyUI 0.18 or later**\n\n"
           "Model files (split files, core loaders):\n"
           "- `models/diffusion_models/ltx-2-19b-dev-fp8.safetensors`\n"
           "- `models/text_encoders/gemma_3_12B_it_fp4_mixed.safetensors` and "
           "`models/text_encoders/ltx-2-19b-embeddings_connector_dev_bf16.safetensors` (DualCLIPLoader, type `ltxv`)\n"
           "- `models/vae/LTX2_video_vae_bf16.safetensors`\n\n"
           "There is no reference sensitivity file for LTX-2: the **Sensitivity Calibrator** measures this model's "
           "profile in the same run (it samples like a KSampler, one extra model evaluation per step) and saves it as "
           "`models/sencache/ltx2_t2v_00001.safetensors`. For later runs use Load Profile → SenCache instead (see "
           "`sencache_calibrate_save_load_apply`).\n\n"
           "With sound (LTXV Empty Latent Audio → LTXV Concat AV Latent → sampler → LTXV Separate AV Latent, as in "
           "ComfyUI's LTX-2 templates) SenCache decides once per model evaluation for video and audio together.",
           (800, 400), (660, 400))
    g.note(SENCACHE_HOWTO, (1500, 400), (580, 400))
    unet = g.node("UNETLoader", (0, 0), unet_name="ltx-2-19b-dev-fp8.safetensors", weight_dtype="default")
    te = g.node("DualCLIPLoader", (0, 130), clip_name1="gemma_3_12B_it_fp4_mixed.safetensors",
                clip_name2="ltx-2-19b-embeddings_connector_dev_bf16.safetensors", type="ltxv", device="default")
    vae = g.node("VAELoader", (0, 320), vae_name="LTX2_video_vae_bf16.safetensors")
    pos = g.node("CLIPTextEncode", (360, 0), (300, 180), title="CLIP Text Encode (Positive Prompt)",
                 text="A street drummer plays on an upturned bucket at dusk, passers-by clap along, neon signs flicker.")
    neg = g.node("CLIPTextEncode", (360, 210), (300, 180), title="CLIP Text Encode (Negative Prompt)",
                 text="low quality, worst quality, deformed, distorted, disfigured, motion smear, motion artifacts")
    cond = g.node("LTXVConditioning", (360, 420), frame_rate=25.0)
    lat = g.node("EmptyLTXVLatentVideo", (0, 450), width=768, height=512, length=97, batch_size=1)
    cal = g.node("SenCacheCalibrator", (690, 0), (340, 0), color=SC, seed=0, steps=20, cfg=4.0, sampler_name="euler",
                 scheduler="simple", runs=1, denoise=1.0, save_as="ltx2_t2v")
    sc = g.node("SenCacheApply", (1180, 0), color=SC)
    ks = g.node("KSampler", (1540, 0), seed=42, steps=20, cfg=4.0, sampler_name="euler", scheduler="simple", denoise=1.0)
    dec = g.node("VAEDecode", (1880, 0), (200, 80))
    cv = g.node("CreateVideo", (1880, 120), (200, 100), fps=25.0)
    sv = g.node("SaveVideo", (1880, 250), (200, 140), filename_prefix="video/sencache_ltx2")
    g.link(te, 0, pos, "clip"); g.link(te, 0, neg, "clip")
    g.link(pos, 0, cond, "positive"); g.link(neg, 0, cond, "negative")
    g.link(unet, 0, cal, "model"); g.link(cond, 0, cal, "positive"); g.link(cond, 1, cal, "negative")
    g.link(lat, 0, cal, "latent_image")
    g.link(unet, 0, sc, "model"); g.link(cal, 1, sc, "profile")
    g.link(sc, 0, ks, "model"); g.link(cond, 0, ks, "positive"); g.link(cond, 1, ks, "negative"); g.link(lat, 0, ks, "latent_image")
    g.link(ks, 0, dec, "samples"); g.link(vae, 0, dec, "vae"); g.link(dec, 0, cv, "images"); g.link(cv, 0, sv, "video")
    return g.to_json()


COGVIDEOX_NOTE = (
    "### CogVideoX 1.5 (5B) text-to-video with SenCache — **needs a ComfyUI with native CogVideoX (2026)**\n\n"
    "Upstream ComfyUI core has native CogVideoX (`comfy/ldm/cogvideo/`, 2026); ComfyUI 0.3.75 and 0.18.1 do not, "
    "so this workflow is not runnable there. This graph uses only generic core nodes: UNETLoader detects the model "
    "from its weights and CLIPLoader loads the T5 encoder with type `cogvideox` (a type only a ComfyUI with native "
    "CogVideoX lists). "
    "It was **not run on a real CogVideoX host**: SenCache's CogVideoX path is tested with a stand-in model that "
    "follows core's calling convention. If your ComfyUI names a node or type differently, swap it; the SenCache "
    "part (Load Profile → SenCache → sampler) stays the same.\n\nModel files:\n"
    "- `models/diffusion_models/cogvideox1.5_5b_t2v_bf16.safetensors` (your CogVideoX 1.5 file)\n"
    "- `models/text_encoders/t5xxl_fp16.safetensors`\n"
    "- `models/vae/cogvideox_vae_bf16.safetensors`\n"
    "- `models/sencache/sensitivity_cogvid.npz` — the reference sensitivity file (vita-epfl/SenCache, `CogVideoX/`; "
    "preset `cogvideox15`), or your own profile from the calibration workflow.")


def cogvideox(info) -> dict:
    g = Graph(info)
    g.note(COGVIDEOX_NOTE, (0, -400), (640, 370))
    g.note(SENCACHE_HOWTO, (680, -400), (520, 370))
    unet = g.node("UNETLoader", (0, 0), unet_name="cogvideox1.5_5b_t2v_bf16.safetensors", weight_dtype="default")
    te = g.node("CLIPLoader", (0, 130), clip_name="t5xxl_fp16.safetensors", type="cogvideox")
    vae = g.node("VAELoader", (0, 290), vae_name="cogvideox_vae_bf16.safetensors")
    pos = g.node("CLIPTextEncode", (360, 0), (400, 180), title="CLIP Text Encode (Positive Prompt)",
                 text="A hot air balloon drifts over green hills at sunrise, gentle camera pan.")
    neg = g.node("CLIPTextEncode", (360, 210), (400, 180), title="CLIP Text Encode (Negative Prompt)", text="")
    lat = g.node("EmptyHunyuanLatentVideo", (360, 420), width=1360, height=768, length=81, batch_size=1)
    prof = g.node("SenCacheLoadProfile", (800, 0), color=SC, profile_name="sensitivity_cogvid.npz", npz_preset="cogvideox15")
    sc = g.node("SenCacheApply", (800, 130), color=SC)
    ks = g.node("KSampler", (1160, 0), seed=42, steps=50, cfg=6.0, sampler_name="ddim", scheduler="simple", denoise=1.0)
    dec = g.node("VAEDecode", (1520, 0), (220, 80))
    cv = g.node("CreateVideo", (1520, 120), (220, 100), fps=16.0)
    sv = g.node("SaveVideo", (1520, 260), (300, 140), filename_prefix="video/sencache_cogvideox")
    g.link(unet, 0, sc, "model"); g.link(prof, 0, sc, "profile")
    g.link(te, 0, pos, "clip"); g.link(te, 0, neg, "clip")
    g.link(sc, 0, ks, "model"); g.link(pos, 0, ks, "positive"); g.link(neg, 0, ks, "negative"); g.link(lat, 0, ks, "latent_image")
    g.link(ks, 0, dec, "samples"); g.link(vae, 0, dec, "vae"); g.link(dec, 0, cv, "images"); g.link(cv, 0, sv, "video")
    return g.to_json()


def calibrate(info) -> dict:
    g = Graph(info)
    g.note("### Calibrate → save → load → apply (Wan 2.1 T2V 1.3B)\n\n"
           "**1. Calibrate once** (top row): the Sensitivity Calibrator samples like a KSampler (`runs` seeds) and "
           "measures the model's sensitivities on the sampling trajectory (one extra model evaluation per step). "
           "Use the model exactly as you render with it (LoRAs applied, same resolution and frame count). "
           "Save Profile writes `models/sencache/wan21_t2v_1.3B_00001.safetensors`; the same run already renders "
           "with SenCache from the fresh profile.\n\n"
           "**2. Later runs** (bottom group, muted: select it and press Ctrl+M to enable; mute the top row): Load "
           "Profile → SenCache → KSampler. Press R (refresh) first so the new file appears in the list.\n\n"
           "Model files: `models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors`, "
           "`models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`, `models/vae/wan_2.1_vae.safetensors`.",
           (0, 620), (740, 410))
    unet = g.node("UNETLoader", (0, 0), unet_name="wan2.1_t2v_1.3B_fp16.safetensors", weight_dtype="default")
    ms = g.node("ModelSamplingSD3", (0, 130), shift=8.0)
    clip = g.node("CLIPLoader", (0, 260), clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan")
    vae = g.node("VAELoader", (0, 420), vae_name="wan_2.1_vae.safetensors")
    pos = g.node("CLIPTextEncode", (360, 0), (400, 180), title="CLIP Text Encode (Positive Prompt)",
                 text="A red fox trotting through fresh snow in a birch forest, morning light, cinematic.")
    neg = g.node("CLIPTextEncode", (360, 210), (400, 180), title="CLIP Text Encode (Negative Prompt)",
                 text="blurry, low quality, static, distorted, watermark, text")
    lat = g.node("EmptyHunyuanLatentVideo", (360, 420), width=832, height=480, length=33, batch_size=1)
    cal = g.node("SenCacheCalibrator", (800, 0), (340, 0), color=SC, seed=0, steps=30, cfg=6.0, sampler_name="uni_pc",
                 scheduler="simple", runs=2, denoise=1.0, save_as="")
    savep = g.node("SenCacheSaveProfile", (1180, 0), color=SC, filename_prefix="wan21_t2v_1.3B")
    sc = g.node("SenCacheApply", (1180, 130), color=SC)
    ks = g.node("KSampler", (1540, 0), seed=42, steps=30, cfg=6.0, sampler_name="uni_pc", scheduler="simple", denoise=1.0)
    dec = g.node("VAEDecode", (1880, 0), (200, 80))
    cv = g.node("CreateVideo", (1880, 120), (200, 100), fps=16.0)
    sv = g.node("SaveVideo", (1880, 260), (200, 140), filename_prefix="video/sencache_calibrated")
    g.link(unet, 0, ms, "model"); g.link(clip, 0, pos, "clip"); g.link(clip, 0, neg, "clip")
    g.link(ms, 0, cal, "model"); g.link(pos, 0, cal, "positive"); g.link(neg, 0, cal, "negative"); g.link(lat, 0, cal, "latent_image")
    g.link(cal, 1, savep, "profile"); g.link(ms, 0, sc, "model"); g.link(cal, 1, sc, "profile")
    g.link(sc, 0, ks, "model"); g.link(pos, 0, ks, "positive"); g.link(neg, 0, ks, "negative"); g.link(lat, 0, ks, "latent_image")
    g.link(ks, 0, dec, "samples"); g.link(vae, 0, dec, "vae"); g.link(dec, 0, cv, "images"); g.link(cv, 0, sv, "video")
    # later runs: muted group
    y = 590
    lp = g.node("SenCacheLoadProfile", (800, y + 60), color=SC, mode=MODE_NEVER,
                profile_name="wan21_t2v_1.3B_00001.safetensors", npz_preset="auto")
    sc2 = g.node("SenCacheApply", (1180, y + 60), color=SC, mode=MODE_NEVER)
    ks2 = g.node("KSampler", (1540, y + 60), mode=MODE_NEVER, seed=43, steps=30, cfg=6.0, sampler_name="uni_pc",
                 scheduler="simple", denoise=1.0)
    dec2 = g.node("VAEDecode", (1880, y + 60), (200, 80), mode=MODE_NEVER)
    cv2 = g.node("CreateVideo", (1880, y + 160), (200, 100), mode=MODE_NEVER, fps=16.0)
    sv2 = g.node("SaveVideo", (1880, y + 290), (200, 140), mode=MODE_NEVER, filename_prefix="video/sencache_from_profile")
    g.link(ms, 0, sc2, "model"); g.link(lp, 0, sc2, "profile")
    g.link(sc2, 0, ks2, "model"); g.link(pos, 0, ks2, "positive"); g.link(neg, 0, ks2, "negative"); g.link(lat, 0, ks2, "latent_image")
    g.link(ks2, 0, dec2, "samples"); g.link(vae, 0, dec2, "vae"); g.link(dec2, 0, cv2, "images"); g.link(cv2, 0, sv2, "video")
    g.group("2. Later runs: Load Profile → SenCache (muted; Ctrl+M to enable)", (780, y - 20, 1320, 460), "#88a")
    return g.to_json()


def demo(info) -> dict:
    g = Graph(info)
    g.note("### SenCache demo model (CPU, under a minute)\n\n"
           "A small Wan 2.1-architecture model trained in this repository on procedural videos of coloured shapes. "
           "No text encoder or VAE needed: **SenCache Demo Prompt** makes the conditioning, **SenCache Demo Decode** "
           "the frames.\n\nModel file: copy `demo_model/weights/sencache_demo_wan.safetensors` of this pack to "
           "`models/diffusion_models/`.\n\nThe whole workflow took 10–40 s on one CPU thread (idle to busy machine): the Calibrator "
           "measures the demo model's profile (2 runs of 30 steps, one extra evaluation per step), then the "
           "KSampler runs with SenCache. The Visualizer plots that run: S against ε per step, computed and reused "
           "steps, the estimated speed-up.\n\nPrompt words: colours red, green, blue, yellow, white, black, "
           "orange, purple, cyan, gray; shapes circle, square, triangle; 'A and B on C'.", (380, 390), (700, 370))
    unet = g.node("UNETLoader", (0, 0), unet_name="sencache_demo_wan.safetensors", weight_dtype="default")
    ms = g.node("ModelSamplingSD3", (0, 130), shift=8.0)
    pr = g.node("SenCacheDemoPrompt", (0, 260), (320, 140), color=SC, text="red circle and blue square on green")
    zero = g.node("ConditioningZeroOut", (0, 430), (320, 60))
    lat = g.node("EmptyHunyuanLatentVideo", (0, 530), width=128, height=128, length=29, batch_size=1)
    cal = g.node("SenCacheCalibrator", (380, 0), (340, 0), color=SC, seed=0, steps=30, cfg=6.0, sampler_name="uni_pc",
                 scheduler="simple", runs=2, denoise=1.0, save_as="")
    sc = g.node("SenCacheApply", (760, 0), color=SC, eps_main=0.1, eps_start=0.02, max_consecutive_reuse=3)
    ks = g.node("KSampler", (1120, 0), seed=7, steps=30, cfg=6.0, sampler_name="uni_pc", scheduler="simple", denoise=1.0)
    dec = g.node("SenCacheDemoDecode", (1460, 0), (240, 90), color=SC, upscale=4)
    webp = g.node("SaveAnimatedWEBP", (1720, 0), (300, 300), filename_prefix="sencache_demo", fps=8.0)
    vis = g.node("SenCacheVisualizer", (1120, 360), (260, 90), color=SC)
    prev = g.node("PreviewImage", (1420, 360), (560, 400))
    g.link(unet, 0, ms, "model"); g.link(pr, 0, zero, "conditioning")
    g.link(ms, 0, cal, "model"); g.link(pr, 0, cal, "positive"); g.link(zero, 0, cal, "negative"); g.link(lat, 0, cal, "latent_image")
    g.link(ms, 0, sc, "model"); g.link(cal, 1, sc, "profile")
    g.link(sc, 0, ks, "model"); g.link(pr, 0, ks, "positive"); g.link(zero, 0, ks, "negative"); g.link(lat, 0, ks, "latent_image")
    g.link(ks, 0, dec, "samples"); g.link(dec, 0, webp, "images")
    g.link(sc, 0, vis, "model"); g.link(ks, 0, vis, "latent"); g.link(vis, 0, prev, "images")
    return g.to_json()


WORKFLOWS = {
    "sencache_quickstart_wan21_t2v": (quickstart, "Quick start: one SenCache node"),
    "sencache_wan21_t2v": (wan21_t2v, "Wan 2.1 T2V + SenCache"),
    "sencache_wan21_i2v": (wan21_i2v, "Wan 2.1 I2V + SenCache"),
    "sencache_wan22_a14b_t2v": (wan22_a14b, "Wan 2.2 A14B: two experts"),
    "sencache_ltxv_t2v": (ltxv, "LTX-Video + SenCache"),
    "sencache_cogvideox_t2v": (cogvideox, "CogVideoX (newer ComfyUI)"),
    "sencache_ltx2_t2v": (ltx2, "LTX-2 + SenCache (ComfyUI 0.18+)"),
    "sencache_calibrate_save_load_apply": (calibrate, "Calibrate → save → load → apply"),
    "sencache_demo_model": (demo, "SenCache demo model (CPU)"),
}


# The ComfyUI version each workflow is built from (its /object_info): 0.3.75 unless a workflow needs nodes only a
# newer host has. Regenerate each on its own host (SENCACHE_COMFYUI, see devkit/host.py).
DEFAULT_HOST = "0.3.75"
BUILT_ON = {"sencache_ltx2_t2v": "0.18.1"}


def built_on(name: str) -> str:
    return BUILT_ON.get(name, DEFAULT_HOST)


def write_all(object_info: dict, out: pathlib.Path = OUT, demo_frames=None, host_version: str = DEFAULT_HOST
              ) -> list[pathlib.Path]:
    """Write every workflow built on `host_version` and its thumbnail (the graph; for the demo, plus a strip of
    frames it rendered)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (build, title) in WORKFLOWS.items():
        if built_on(name) != host_version:
            print(f"{name}: built on ComfyUI {built_on(name)}, this host is {host_version}: left as is")
            continue
        wf = build(object_info)
        save(wf, out / f"{name}.json")
        render_thumbnail(wf, out / f"{name}.jpg", title=title)
        if name == "sencache_demo_model" and demo_frames:
            add_frame_strip(out / f"{name}.jpg", demo_frames)
        paths.append(out / f"{name}.json")
    return paths


def add_frame_strip(path: pathlib.Path, frames) -> None:
    """Append a row of frames (PIL images) under the thumbnail."""
    from PIL import Image
    thumb = Image.open(path).convert("RGB")
    n = len(frames)
    size = thumb.width // n
    canvas = Image.new("RGB", (thumb.width, thumb.height + size), (32, 32, 32))
    canvas.paste(thumb, (0, 0))
    for i, f in enumerate(frames):
        canvas.paste(f.convert("RGB").resize((size, size), Image.NEAREST), (i * size, thumb.height))
    canvas.save(path, quality=85)


def render_demo_frames(srv, info: dict, count: int = 8):
    """Run the demo workflow on a server whose diffusion_models holds the demo weights; `count` frames of it."""
    import io
    import urllib.request
    from PIL import Image
    from .workflow import to_api
    prompt = to_api(demo(info), info)
    for n in prompt.values():          # frames as PNGs we can fetch, instead of an animated WEBP
        if n["class_type"] == "SaveAnimatedWEBP":
            n["class_type"], n["inputs"] = "PreviewImage", {"images": n["inputs"]["images"]}
    t0 = time.perf_counter()
    entry = srv.run(prompt, timeout=600)
    print(f"demo workflow ran in {time.perf_counter() - t0:.1f} s (server queue to outputs, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')})")
    dec = next(k for k, n in prompt.items() if n["class_type"] == "SenCacheDemoDecode")
    pid = next(k for k, n in prompt.items() if n["class_type"] == "PreviewImage" and n["inputs"]["images"][0] == dec)
    files = entry["outputs"][pid]["images"]
    pick = [files[round(i * (len(files) - 1) / (count - 1))] for i in range(count)]
    frames = []
    for f in pick:
        url = f"{srv.url}/view?filename={f['filename']}&subfolder={f['subfolder']}&type={f['type']}"
        with urllib.request.urlopen(url, timeout=30) as r:
            frames.append(Image.open(io.BytesIO(r.read())).copy())
    return frames


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    with_frames = "--demo-frames" in argv
    argv = [a for a in argv if a != "--demo-frames"]
    frames = None
    from .host import version_text
    version = version_text()
    if argv:
        info = json.loads(pathlib.Path(argv[0]).read_text())
    else:
        import os
        import tempfile
        from .server import ComfyServer
        weights = pathlib.Path(__file__).resolve().parent.parent / "demo_model" / "weights" / "sencache_demo_wan.safetensors"
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with tempfile.TemporaryDirectory() as d:
            srv = ComfyServer(d, tiny=())
            srv.prepare()
            if with_frames and weights.exists():
                (pathlib.Path(d) / "models" / "diffusion_models" / weights.name).symlink_to(weights)
            with srv:
                info = srv.get("/object_info")
                if with_frames and weights.exists():
                    frames = render_demo_frames(srv, info)
    for p in write_all(info, demo_frames=frames, host_version=version):
        print(p)


if __name__ == "__main__":
    main()
