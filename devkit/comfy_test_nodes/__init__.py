"""Test-only ComfyUI nodes that devkit.server links into a test server's custom_nodes (never shipped with the pack).

SenCacheDevRandomConditioning: a seeded random text context [1, tokens, width] as CONDITIONING, so API workflows
can sample the tiny models without a text encoder.
SenCacheDevEmptyLTXVAudioLatent: an empty LTX-2 audio latent [batch, 8, frames, 16] as LTXVEmptyLatentAudio makes
it, without the audio VAE that node reads its sizes from.
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


class SenCacheDevEmptyLTXVAudioLatent:
    CATEGORY = "SenCache/devkit"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    DESCRIPTION = "Empty LTX-2 audio latent for tests (no audio VAE needed)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latent_frames": ("INT", {"default": 5, "min": 1, "max": 4096, "tooltip": "Audio latent frames."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Batch size."}),
        }}

    def make(self, latent_frames, batch_size):
        return ({"samples": torch.zeros(batch_size, 8, latent_frames, 16), "sample_rate": 44100, "type": "audio"},)


NODE_CLASS_MAPPINGS = {"SenCacheDevRandomConditioning": SenCacheDevRandomConditioning,
                       "SenCacheDevEmptyLTXVAudioLatent": SenCacheDevEmptyLTXVAudioLatent}
NODE_DISPLAY_NAME_MAPPINGS = {"SenCacheDevRandomConditioning": "Random Conditioning (SenCache devkit)",
                              "SenCacheDevEmptyLTXVAudioLatent": "Empty LTX-2 Audio Latent (SenCache devkit)"}
