"""Tiny random-weight LTX-2 (ComfyUI class `LTXAV`, audio + video) built from ComfyUI's own
`comfy.ldm.lightricks.av_model.LTXAVModel` (ComfyUI 0.18 and later) and saved as a checkpoint that
comfy.sd.load_diffusion_model / UNETLoader detect like the real file.

How the real file is detected (comfy/model_detection.py): `adaln_single...` keys make it a Lightricks model,
`audio_adaln_single.linear.weight` makes it `ltxav`, and the model's sizes come from the file's safetensors
metadata `config` = {"transformer": {...}}, as LTX-2's released checkpoints carry them. We write the same
metadata with small sizes.

One checkpoint serves both uses: sampled with a video latent only, the diffusion model receives `[video]` and
returns the video tensor; sampled with a video + audio latent (a NestedTensor, as LTXVConcatAVLatent makes), it
receives and returns `[video, audio]`.

Weights are seeded; the module is built on the meta device and every tensor is filled by us (comfy.ops creates
layers with torch.empty).
"""
from __future__ import annotations

import json
import pathlib

import torch
from safetensors.torch import save_file

# Small sizes. The text connector's width (heads x head_dim) must equal caption_channels (it transforms the
# text embedding in place); the prompt embedding then has caption_channels * 2 values per token (video, audio).
TRANSFORMER = dict(
    in_channels=128, audio_in_channels=128,
    num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
    audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16,
    caption_channels=32, num_layers=2,
    connector_num_attention_heads=2, connector_attention_head_dim=16, connector_num_layers=1,
)
NAME = "tiny_ltxav"
TEXT_WIDTH = TRANSFORMER["caption_channels"]      # width of the (unprocessed) text embedding
AUDIO_CHANNELS, AUDIO_BINS = 8, 16                 # LTXAVModel's audio latent: [B, 8, T, 16] (8*16 = 128 in)


def available() -> bool:
    try:
        import comfy.ldm.lightricks.av_model  # noqa: F401
    except ImportError:
        return False
    return True


def build_module(seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    import comfy.ops
    from comfy.ldm.lightricks.av_model import LTXAVModel
    with torch.device("meta"):
        module = LTXAVModel(operations=comfy.ops.disable_weight_init, dtype=torch.float32, **TRANSFORMER)
    module = module.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in sorted(module.state_dict(keep_vars=True).items()):
            if p.ndim == 1 and "norm" in pname and pname.endswith("weight"):
                p.fill_(1.0)
            elif p.ndim == 1 and pname.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
            else:   # weights, scale_shift_table, learnable registers, ...
                fan_in = p.shape[-1] if p.ndim >= 2 else 1
                std = scale if p.ndim < 2 else min(scale, 1.0 / fan_in ** 0.5)
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def write_checkpoint(folder: str | pathlib.Path, name: str = NAME, seed: int = 0) -> pathlib.Path:
    """Save <folder>/<name>.safetensors (diffusion_models layout, no prefix, LTX-2's `config` metadata)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    if path.exists():
        return path
    module = build_module(seed)
    sd = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file(sd, str(path), metadata={"config": json.dumps({"transformer": TRANSFORMER}),
                                       "sencache_tiny": json.dumps({"name": name, "seed": seed})})
    return path


def conds(seed: int, tokens: int = 4):
    """(positive, negative) conditioning as LTX-2's text encoder gives it (comfy/text_encoders/lt.py): an
    unprocessed embedding of TEXT_WIDTH per token, flagged `unprocessed_ltxav_embeds`, no attention mask (the
    model's own connectors process it and pad it with learned registers)."""
    from . import sampling
    return (sampling.text_cond(seed, tokens, width=TEXT_WIDTH, extra={"unprocessed_ltxav_embeds": True}),
            sampling.text_cond(seed + 1000, tokens, width=TEXT_WIDTH, extra={"unprocessed_ltxav_embeds": True}))


def video_latent(frames: int = 2, h: int = 4, w: int = 4, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, TRANSFORMER["in_channels"], frames, h, w)


def av_latent(frames: int = 2, h: int = 4, w: int = 4, audio_frames: int = 5, batch: int = 1):
    """Video + audio latent as LTXVConcatAVLatent makes it (a NestedTensor of the two)."""
    import comfy.nested_tensor
    audio = torch.zeros(batch, AUDIO_CHANNELS, audio_frames, AUDIO_BINS)
    return comfy.nested_tensor.NestedTensor((video_latent(frames, h, w, batch), audio))
