"""A CogVideoX stand-in for hosts without native CogVideoX (ComfyUI 0.3.75 and 0.18.1 have none; upstream ComfyUI
gained `comfy/ldm/cogvideo/model.py` later). It follows upstream core's CogVideoX where the pack can tell:

- the diffusion module is called as `forward(x, timestep, context, ofs=None, transformer_options={}, **kwargs)` and
  runs its DIFFUSION_MODEL wrappers itself (WrapperExecutor.new_class_executor over `_forward`, the arguments passed
  positionally: transformer_options is args[4]);
- x carries `in_channels` (16, or 32 for image-to-video: 16 noisy + 16 reference channels), the output
  `out_channels` = 16; `timestep` is the integer DDPM step 0..999 (ModelSamplingDiscrete.timestep);
- the model class is named `CogVideoX` (comfy.model_base), v-prediction on ComfyUI's discrete schedule with
  scaled-linear betas 0.00085..0.012 rescaled to zero terminal SNR (σ from about 0.03 up to about 4519);
- `concat_cond` fills the extra input channels with the reference latent, or zeros without one, and an `ofs`
  condition (default 2.0) is passed when the model has an ofs embedding (CogVideoX 1.5 I2V).

The transformer itself is replaced by a small seeded network (1x1x1 convolutions, a timestep and a text embedding):
the pack only sees the module's inputs, outputs and call convention.
"""
from __future__ import annotations

import math

import torch

TEXT_DIM, HIDDEN = 32, 32


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float().reshape(-1)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class CogVideoXStandIn(torch.nn.Module):
    def __init__(self, in_channels=16, out_channels=16, text_embed_dim=TEXT_DIM, hidden=HIDDEN, ofs_embed_dim=None,
                 image_model=None, dtype=None, device=None, operations=None, **kwargs):
        super().__init__()
        self.dtype = dtype
        self.in_channels, self.out_channels, self.hidden = in_channels, out_channels, hidden
        self.ofs_proj_dim = ofs_embed_dim
        ops = operations
        self.proj_in = ops.Conv3d(in_channels, hidden, 1, dtype=dtype, device=device)
        self.text_proj = ops.Linear(text_embed_dim, hidden, dtype=dtype, device=device)
        self.time_embedding = ops.Linear(hidden, hidden, dtype=dtype, device=device)
        self.ofs_embedding = ops.Linear(ofs_embed_dim, hidden, dtype=dtype, device=device) if ofs_embed_dim else None
        self.proj_out = ops.Conv3d(hidden, out_channels, 1, dtype=dtype, device=device)

    def forward(self, x, timestep, context, ofs=None, transformer_options={}, **kwargs):
        import comfy.patcher_extension as pe
        return pe.WrapperExecutor.new_class_executor(
            self._forward, self, pe.get_all_wrappers(pe.WrappersMP.DIFFUSION_MODEL, transformer_options)
        ).execute(x, timestep, context, ofs, transformer_options, **kwargs)

    def _forward(self, x, timestep, context, ofs=None, transformer_options={}, **kwargs):
        emb = self.time_embedding(torch.nn.functional.silu(_timestep_embedding(timestep, self.hidden).to(x.dtype)))
        if self.ofs_embedding is not None and ofs is not None:
            emb = emb + self.ofs_embedding(_timestep_embedding(ofs, self.ofs_proj_dim).to(x.dtype))
        h = self.proj_in(x) + (emb + self.text_proj(context).mean(dim=1))[:, :, None, None, None]
        return self.proj_out(torch.nn.functional.silu(h))


def build(in_channels: int = 16, ofs: bool = False, seed: int = 0):
    """A ModelPatcher holding the stand-in (class CogVideoX), weights seeded, on the CPU."""
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models_base
    from comfy import utils

    class CogVideoXLatent(comfy.latent_formats.LatentFormat):
        latent_channels = 16
        latent_dimensions = 3

        def __init__(self):
            self.scale_factor = 0.7

    class CogVideoX(comfy.model_base.BaseModel):
        def __init__(self, model_config, device=None):
            super().__init__(model_config, comfy.model_base.ModelType.V_PREDICTION, device=device,
                             unet_model=CogVideoXStandIn)

        def concat_cond(self, **kwargs):
            noise = kwargs["noise"]
            extra = self.diffusion_model.in_channels - noise.shape[1]
            if extra == 0:
                return None
            image = kwargs.get("concat_latent_image")
            if image is None:
                return torch.zeros([noise.shape[0], extra, *noise.shape[2:]], dtype=noise.dtype, device=noise.device)
            image = utils.common_upscale(image.to(kwargs["device"]), noise.shape[-1], noise.shape[-2], "bilinear", "center")
            image = self.process_latent_in(image[:, :, :noise.shape[2]])
            return utils.resize_to_batch_size(image, noise.shape[0])[:, :extra]

        def extra_conds(self, **kwargs):
            out = super().extra_conds(**kwargs)
            if self.diffusion_model.ofs_proj_dim is not None:
                import comfy.conds
                noise = kwargs["noise"]
                value = kwargs.get("ofs")
                if value is None:
                    value = torch.full((noise.shape[0],), 2.0, device=noise.device, dtype=noise.dtype)
                out["ofs"] = comfy.conds.CONDRegular(value)
            return out

    class Config(comfy.supported_models_base.BASE):
        unet_config = {"image_model": "cogvideox"}
        sampling_settings = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012, "zsnr": True}
        latent_format = CogVideoXLatent
        memory_usage_factor = 1.0
        supported_inference_dtypes = [torch.float32]

    config = Config({"image_model": "cogvideox", "in_channels": in_channels, "ofs_embed_dim": 32 if ofs else None})
    config.set_inference_dtype(torch.float32, None)
    model = CogVideoX(config, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.diffusion_model.state_dict(keep_vars=True).items()):
            fan_in = p[0].numel() if p.ndim >= 2 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (0.01 if p.ndim == 1 else 1.0 / fan_in ** 0.5))
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
