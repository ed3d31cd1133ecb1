"""Nodes for the SenCache demo model (demo_model/): a tiny Wan 2.1 T2V checkpoint trained on procedural shape videos.

Workflow: UNETLoader(sencache_demo_wan.safetensors) -> ModelSamplingSD3(shift 8) -> KSampler(uni_pc, simple, 30 steps,
cfg 6) with SenCache Demo Prompt as positive and ConditioningZeroOut of it (zeros = unconditional) as negative, latent from EmptyHunyuanLatentVideo(width 128, height 128, length 29) = [1, 16, 8, 16, 16]; then
SenCache Demo Decode -> IMAGE frames.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..demo_model import data


class SenCacheDemoPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SenCacheDemoPrompt", display_name="SenCache Demo Prompt", category="SenCache/demo",
            description="Conditioning for the SenCache demo model (no text encoder needed): 1-2 coloured shapes on a "
                        "background colour, e.g. 'red circle and blue square on green'.",
            inputs=[
                io.String.Input("text", multiline=True, default="red circle and blue square on green",
                                tooltip="'<colour> <shape> [and <colour> <shape>] on <colour>'. Colours: "
                                        + ", ".join(data.COLOUR_NAMES) + ". Shapes: " + ", ".join(data.SHAPES)
                                        + f". Background defaults to {data.DEFAULT_BACKGROUND}. The demo model draws the "
                                        "shapes centred; with two, the one whose colour comes first in this list is "
                                        "large and the other inside it. Use this as the positive; "
                                        "for the negative use ConditioningZeroOut on it (zeros = unconditional)."),
            ],
            outputs=[io.Conditioning.Output(tooltip="CONDITIONING for the demo model: a [1, 3, 4096] context.")],
        )

    @classmethod
    def execute(cls, text) -> io.NodeOutput:
        context = data.encode_prompt(text)          # ValueError with the valid words on unknown text
        return io.NodeOutput([[context[None], {}]])


class SenCacheDemoDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SenCacheDemoDecode", display_name="SenCache Demo Decode", category="SenCache/demo",
            description="Decodes a LATENT of the SenCache demo model into video frames (its fixed linear latent map; "
                        "no VAE needed).",
            inputs=[
                io.Latent.Input("samples", tooltip="A LATENT from a KSampler run with the demo model: [B, 16, 8, 16, 16] "
                                                   "(EmptyHunyuanLatentVideo 128 x 128, length 29)."),
                io.Int.Input("upscale", default=4, min=1, max=32,
                             tooltip="Nearest-neighbour enlargement factor of the 32 x 32 frames (1 = native size)."),
            ],
            outputs=[io.Image.Output(tooltip="Frames [B*T, 32*upscale, 32*upscale, 3], float 0..1, video by video.")],
        )

    @classmethod
    def execute(cls, samples, upscale=4) -> io.NodeOutput:
        return io.NodeOutput(decode_to_images(samples["samples"], upscale))


def decode_to_images(latent: torch.Tensor, upscale: int = 4) -> torch.Tensor:
    """KSampler LATENT samples [B, 16, T, 16, 16] -> IMAGE [B*T, H, W, 3]."""
    import comfy.latent_formats
    if latent.ndim == 4:
        latent = latent[None]
    if latent.ndim != 5 or latent.shape[1] != data.LATENT_CHANNELS or latent.shape[-2:] != (data.LATENT_SIZE,) * 2:
        raise ValueError(f"SenCache Demo Decode expects a demo-model latent [B, {data.LATENT_CHANNELS}, T, "
                         f"{data.LATENT_SIZE}, {data.LATENT_SIZE}], got {list(latent.shape)}")
    z = comfy.latent_formats.Wan21().process_in(latent.float().cpu())    # KSampler output -> model space
    frames = data.decode_latent(z)                                        # [B, T, 3, 32, 32]
    img = frames.reshape(-1, *frames.shape[2:]).movedim(1, -1)            # [B*T, 32, 32, 3]
    if upscale > 1:
        img = img.repeat_interleave(upscale, dim=1).repeat_interleave(upscale, dim=2)
    return img.contiguous()


DEMO_NODES = [SenCacheDemoPrompt, SenCacheDemoDecode]
NODES = DEMO_NODES          # the name nodes/__init__.py's optional-module loader reads
