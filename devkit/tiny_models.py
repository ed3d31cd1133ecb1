"""Tiny random-weight video DiTs built from ComfyUI's own model classes and saved as checkpoints that
ComfyUI's loaders (comfy.sd.load_diffusion_model / UNETLoader) detect like the real files.

Weights are seeded; the module is built on the meta device and every tensor is filled by us
(comfy.ops creates layers with torch.empty).
"""
from __future__ import annotations

import json
import pathlib

import torch
from safetensors.torch import save_file

# name -> (family, constructor kwargs). Wan detection: heads = dim // 128, text_dim 4096, freq_dim 256.
WAN_KW = dict(patch_size=(1, 2, 2), text_len=512, dim=128, ffn_dim=256, freq_dim=256, text_dim=4096,
              num_heads=1, num_layers=2, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)
SPECS = {
    "tiny_wan21_t2v": ("wan", dict(WAN_KW, model_type="t2v", in_dim=16, out_dim=16)),
    "tiny_wan21_i2v": ("wan", dict(WAN_KW, model_type="i2v", in_dim=36, out_dim=16)),
    "tiny_wan22_5b": ("wan", dict(WAN_KW, model_type="t2v", in_dim=48, out_dim=48)),
    # LTXV detection: 32 heads fixed, head_dim = to_k.out // 32, caption_channels 4096, 128 latent channels.
    "tiny_ltxv": ("ltxv", dict(in_channels=128, cross_attention_dim=128, attention_head_dim=4,
                               num_attention_heads=32, caption_channels=4096, num_layers=2)),
    # A family SenCache does not list (ComfyUI class HunyuanVideo): its sizes come from ComfyUI's own detection of
    # these key shapes (hidden 128 = one 128-wide head, 16 latent channels, text width 32, a 768-wide pooled vector
    # as HunyuanVideo 1.0 has, one block of each kind).
    "tiny_hunyuan_video": ("hunyuan_video", {
        "img_in.proj.weight": (128, 16, 1, 2, 2), "final_layer.linear.weight": (16 * 4, 128),
        "txt_in.input_embedder.weight": (128, 32), "txt_in.individual_token_refiner.blocks.0.norm1.weight": (128,),
        "vector_in.in_layer.weight": (128, 768), "double_blocks.0.img_attn.qkv.weight": (384, 128),
        "single_blocks.0.linear1.weight": (128, 128)}),
}


def build_module(name: str, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    import comfy.ops
    family, kw = SPECS[name]
    ops = comfy.ops.disable_weight_init
    with torch.device("meta"):
        if family == "wan":
            from comfy.ldm.wan.model import WanModel
            module = WanModel(operations=ops, dtype=torch.float32, **kw)
        elif family == "ltxv":
            from comfy.ldm.lightricks.model import LTXVModel
            module = LTXVModel(operations=ops, dtype=torch.float32, **kw)
        else:
            import comfy.model_detection
            from comfy.ldm.hunyuan_video.model import HunyuanVideo
            shapes = {k: torch.empty(v) for k, v in kw.items()}
            config = comfy.model_detection.detect_unet_config(shapes, "")
            module = HunyuanVideo(operations=ops, dtype=torch.float32, **config)
    module = module.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in sorted(module.state_dict(keep_vars=True).items()):
            if p.ndim == 1 and ("norm" in pname and pname.endswith("weight")):
                p.fill_(1.0)
            elif p.ndim == 1 and pname.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
            else:   # weights, `modulation`, scale_shift_table, ...
                fan_in = p.shape[-1] if p.ndim >= 2 else 1
                std = scale if p.ndim < 2 else min(scale, 1.0 / fan_in ** 0.5)
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def write_checkpoint(name: str, folder: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Save `name` as <folder>/<name>.safetensors (diffusion_models layout, no prefix). Cached by content."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    if path.exists():
        return path
    module = build_module(name, seed)
    sd = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file(sd, str(path), metadata={"sencache_tiny": json.dumps({"name": name, "seed": seed})})
    return path
