"""Test-only ComfyUI nodes that devkit.server links into a test server's custom_nodes (never shipped with the pack).

SenCacheDevRandomConditioning: a seeded random text context [1, tokens, width] as CONDITIONING, so API workflows
can sample the tiny models without a text encoder.
"""
import torch


class SenCacheDevRandomConditioning:
    CATEGORY = "SenCache/devkit"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    DESCRIPTION = "Seeded random conditioning for tests (no text encoder needed)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 1, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the random context."}),
            "tokens": ("INT", {"default": 4, "min": 1, "max": 512, "tooltip": "Context length (tokens)."}),
            "width": ("INT", {"default": 4096, "min": 1, "max": 8192, "tooltip": "Context width (4096 for Wan/LTXV)."}),
            "attention_mask": ("BOOLEAN", {"default": False, "tooltip": "Add an all-ones attention mask (LTXV needs one)."}),
        }}

    def make(self, seed, tokens, width, attention_mask=False):
        g = torch.Generator().manual_seed(seed)
        extra = {"attention_mask": torch.ones(1, tokens, dtype=torch.long)} if attention_mask else {}
        return ([[torch.randn(1, tokens, width, generator=g), extra]],)


NODE_CLASS_MAPPINGS = {"SenCacheDevRandomConditioning": SenCacheDevRandomConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"SenCacheDevRandomConditioning": "Random Conditioning (SenCache devkit)"}
