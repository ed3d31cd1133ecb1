"""Shared helpers of the demo and the quality benchmark: boot the real ComfyUI, load the demo model, sample through
ComfyUI's own sampler, count model evaluations, decode and measure.

Units: frames are float 0..1, [T, 3, 32, 32]; PSNR in dB over all frames of a clip; an "evaluation" is one
sampler call of the diffusion model covering every conditioning of that step (cond + uncond with CFG > 1), counted
from the rows that actually reach WanModel.forward.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import pathlib
import sys
import tempfile
import time
import types
from dataclasses import dataclass

import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WEIGHTS = REPO / "demo_model" / "weights" / "sencache_demo_wan.safetensors"
WEIGHTS_NAME = WEIGHTS.name
# Models of three training recipes (demo_model/README.md). Recipe A: the demo model and two earlier checkpoints of the
# same run (validation = step 7,221, demo_step9139). Recipes B ("wide": 2 blocks of width 256, free layout, training
# σ towards low noise, 20 % prompt dropout) and C ("deep": 8 blocks of width 128, sides layout, training σ towards
# high noise, 5 % prompt dropout). Rules are chosen on recipe A and confirmed on B and C.
WEIGHTS_DIR = REPO / "demo_model" / "weights"
VALIDATION_WEIGHTS = WEIGHTS_DIR / "sencache_demo_wan_validation.safetensors"
MODELS = {"demo": WEIGHTS, "validation": VALIDATION_WEIGHTS,
          "demo_step9139": WEIGHTS_DIR / "sencache_demo_wan_step9139.safetensors",
          "recipe_wide": WEIGHTS_DIR / "sencache_recipe_wide.safetensors",
          "recipe_deep": WEIGHTS_DIR / "sencache_recipe_deep.safetensors"}


def resolve_weights(name_or_path: str | os.PathLike) -> pathlib.Path:
    """A model name from MODELS ('demo', 'validation', ...) or a path to a safetensors file."""
    if str(name_or_path) in MODELS:
        return MODELS[str(name_or_path)]
    p = pathlib.Path(name_or_path)
    if not p.is_file():
        raise FileNotFoundError(f"weights {str(name_or_path)!r}: not a file and not one of {sorted(MODELS)}")
    return p
TEMPLATE = dict(sampler="uni_pc", scheduler="simple", steps=30, cfg=6.0, shift=8.0)   # ComfyUI's Wan 2.1 template


def boot(base_dir: str | os.PathLike | None = None, weights: str | os.PathLike | None = None):
    """Boot ComfyUI in-process (CPU) with this pack loaded through ComfyUI's own loader; link the demo weights into
    BASE/models/diffusion_models so UNETLoader can find them. Returns (nodes module, pack namespace, base dir)."""
    from devkit import host
    base = pathlib.Path(base_dir or tempfile.mkdtemp(prefix="sencache_bench_"))
    nodes = host.boot(base)
    import folder_paths
    dm = pathlib.Path(folder_paths.get_folder_paths("diffusion_models")[0])
    dm.mkdir(parents=True, exist_ok=True)
    w = pathlib.Path(weights or WEIGHTS).resolve()
    if w.exists():
        link = dm / WEIGHTS_NAME
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(w)
        except OSError:
            import shutil
            shutil.copy2(w, link)
    return nodes, pack_namespace(), base


def pack_namespace():
    """The pack's modules as ComfyUI loaded them (as tests/conftest.py's `sc` fixture)."""
    from devkit import host
    pack = host.pack_module()
    ns = types.SimpleNamespace(pack=pack)
    for name in ("runtime", "apply", "calibrate", "profiles", "demo", "schedule"):
        setattr(ns, name, importlib.import_module(f"{pack.__name__}.nodes.{name}"))
    ns.core = importlib.import_module(f"{pack.__name__}.sencache_core")
    ns.tuning_records = importlib.import_module(f"{pack.__name__}.sencache_core.tuning")
    try:
        ns.plotting = importlib.import_module(f"{pack.__name__}.nodes.plotting")
    except Exception:
        ns.plotting = None
    return ns


def weights_info(path: str | os.PathLike = WEIGHTS) -> dict:
    from safetensors import safe_open
    p = pathlib.Path(path)
    h = hashlib.sha256(p.read_bytes()).hexdigest()
    with safe_open(str(p), "pt") as f:
        meta = f.metadata() or {}
    return {"path": str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p), "sha256": h,
            "training_steps": meta.get("steps"), "loss": meta.get("loss"), "train_minutes": meta.get("train_minutes")}


def load_model(path: str | os.PathLike = WEIGHTS):
    import comfy.sd
    return comfy.sd.load_diffusion_model(str(path))


def with_shift(model, shift: float):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    return ModelSamplingSD3().patch(model, shift=shift)[0]


def conds(text: str):
    """(positive, negative) CONDITIONING as SenCacheDemoPrompt + ConditioningZeroOut make them."""
    from demo_model import data
    ctx = data.encode_prompt(text)[None]
    return [[ctx, {}]], [[torch.zeros_like(ctx), {}]]


def empty_latent(batch: int = 1) -> torch.Tensor:
    from demo_model import data
    return torch.zeros(batch, *data.LATENT_SHAPE)


class EvalCounter:
    """Counts what really reaches WanModel._forward (the computation itself, inside every DIFFUSION_MODEL wrapper,
    which WanModel.forward runs): calls and batch rows;
    evaluations = rows / rows per evaluation (2 with CFG > 1, else 1).

    memo=True also memoises the forward on its exact input bits (x, timestep, context): a deterministic model gives
    the same output for the same input, so repeated identical calls (the shared prefix of runs that differ only in a
    threshold) return the stored output without computing it. The count is unchanged (a memoised call still counts
    as an evaluation of that run); wall-clock times of memoised runs are NOT meaningful (timings come from runs
    with memo off)."""

    def __init__(self, model, memo: bool = False):
        self.module = model.model.diffusion_model
        self.calls = 0
        self.rows = 0
        self.hits = 0
        self.total_hits = 0
        self.total_computed = 0     # calls that really ran the model (memo misses), over the counter's life
        self.memo_on = memo
        self.store: dict = {}
        self.original = self.module._forward
        self.module._forward = self._forward

    def _forward(self, x, timestep, context, *args, **kwargs):
        self.calls += 1
        self.rows += int(x.shape[0])
        if not self.memo_on:
            self.total_computed += 1
            return self.original(x, timestep, context, *args, **kwargs)
        h = hashlib.blake2b(digest_size=16)
        for t in (x, timestep, context):
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        k = h.digest()
        hit = self.store.get(k)
        if hit is not None:
            self.hits += 1
            self.total_hits += 1
            return hit.clone()
        self.total_computed += 1
        out = self.original(x, timestep, context, *args, **kwargs)
        self.store[k] = out.detach().clone()
        return out

    def clear_memo(self):
        self.store.clear()

    def reset(self):
        self.calls = 0
        self.rows = 0
        self.hits = 0

    def close(self):
        self.module._forward = self.original
        self.store.clear()


@dataclass
class Run:
    latent: torch.Tensor      # KSampler LATENT samples [1, 16, 8, 16, 16]
    evaluations: float
    seconds: float            # wall-clock
    cpu_seconds: float = float("nan")   # this process's CPU time (less sensitive to other load on a shared machine)


def sample(model, text: str, seed: int, steps: int, cfg: float, sampler: str, scheduler: str,
           counter: EvalCounter | None = None, sigmas: list[float] | None = None) -> Run:
    """One KSampler run (comfy.sample.sample, the path nodes.common_ksampler takes); with `sigmas`, a SamplerCustom
    run on that schedule instead (comfy.sample.sample_custom; `steps` and `scheduler` unused)."""
    import comfy.sample
    import comfy.samplers
    pos, neg = conds(text)
    latent = empty_latent()
    noise = comfy.sample.prepare_noise(latent, seed)
    if counter is not None:
        counter.reset()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():      # as ComfyUI's executor runs nodes
        if sigmas is None:
            out = comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, pos, neg, latent, disable_pbar=True,
                                      seed=seed)
        else:
            out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object(sampler),
                                             torch.tensor(sigmas, dtype=torch.float32), pos, neg, latent,
                                             disable_pbar=True, seed=seed)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    per = 2 if cfg != 1.0 else 1
    ev = counter.rows / per if counter is not None else float("nan")
    return Run(out, ev, secs, cpu)


def ksampler_sigmas(model, steps: int, sampler: str, scheduler: str) -> list[float]:
    """The σ schedule KSampler uses (with its discarded penultimate σ for uni_pc, dpm_2, ...)."""
    import comfy.samplers
    return [float(v) for v in comfy.samplers.KSampler(model, steps, "cpu", sampler, scheduler).sigmas]


def decode(latent: torch.Tensor) -> torch.Tensor:
    """KSampler LATENT -> frames [T, 3, 32, 32] in 0..1 (Wan21 process_in first, as SenCacheDemoDecode)."""
    import comfy.latent_formats
    from demo_model import data
    z = comfy.latent_formats.Wan21().process_in(latent.float().cpu())
    return data.decode_latent(z)[0]


# ---- metrics --------------------------------------------------------------------------------------------
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """dB, peak 1, over all pixels of all frames."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(1.0 / mse)).item()


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window σ=1.5, K1=0.01, K2=0.03, data range 1), per channel, valid
    region, averaged over channels and frames. a, b: [T, 3, H, W] in 0..1."""
    import torch.nn.functional as F
    x = a.double().reshape(-1, 1, *a.shape[-2:])
    y = b.double().reshape(-1, 1, *b.shape[-2:])
    w = _gauss()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx * mx
    syy = F.conv2d(y * y, w) - my * my
    sxy = F.conv2d(x * y, w) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(m.mean())


def write_json(path: pathlib.Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str))
