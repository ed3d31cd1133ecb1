"""Train the SenCache demo model: ComfyUI's own WanModel (Wan 2.1 T2V layout, tiny) on procedural shape videos.

    .dev/venv/bin/python -m demo_model.train            # from the repo root; resumes if --state exists

Rectified flow in ComfyUI's convention (CONST / ModelSamplingDiscreteFlow): x_t = (1 - t) x0 + t eps, the model
predicts v = eps - x0 and is called as forward(x [B,16,T,H,W], timestep = 1000 t [B], context [B,3,4096]).
Deterministic (seeded per step, 1 thread, torch.use_deterministic_algorithms); restarting continues from
--state (optimizer, weights, EMA; kept in .dev/, not committed) and gives the same trajectory as an uninterrupted run
on the same machine. Without that file (another machine or session), `--init-from` the committed EMA weights starts
a new phase with a fresh optimizer: a different trajectory from the one the lost state would have continued.
CPU float results are not bit-identical across machines, so the weights are committed and never retrained in CI.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from demo_model import data  # noqa: E402

WEIGHTS = REPO / "demo_model" / "weights" / "sencache_demo_wan.safetensors"
STATE = REPO / ".dev" / "demo_train_state.pt"

CONFIG = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=128, ffn_dim=512, freq_dim=256,
              text_dim=4096, out_dim=16, num_heads=1, num_layers=4, window_size=(-1, -1), qk_norm=True,
              cross_attn_norm=True, eps=1e-6)


def model_config(dim: int | None = None, num_layers: int | None = None, ffn_dim: int | None = None) -> dict:
    """CONFIG with another width or depth. ComfyUI detects a Wan checkpoint's heads as dim // 128, so dim must be a
    multiple of 128 and num_heads follows from it."""
    cfg = dict(CONFIG)
    if dim is not None:
        if dim % 128:
            raise ValueError(f"dim {dim}: must be a multiple of 128 (ComfyUI reads heads = dim // 128)")
        cfg.update(dim=dim, num_heads=dim // 128, ffn_dim=4 * dim)
    if num_layers is not None:
        cfg["num_layers"] = num_layers
    if ffn_dim is not None:
        cfg["ffn_dim"] = ffn_dim
    return cfg

DATA_DESCRIPTION = (
    "Procedural videos from demo_model/data.py: 8 RGB frames of 32x32, 1-2 moving (bouncing) rotating shapes "
    "(circle/square/triangle) of distinct colours on a plain background colour; latents = pixel_unshuffle(2) then "
    "an orthonormal 12->16 channel map, (x-0.5)/0.45, shape [16, 8, 16, 16] in the model's space. Context = "
    "data.encode_prompt(text): [3, 4096]. Unconditional = zeros.")


def build_model(seed: int, config: dict | None = None):
    """WanModel on the meta device with comfy ops, then every tensor initialised by us (Wan's init scheme)."""
    import comfy.ops
    from comfy.ldm.wan.model import WanModel
    config = config or CONFIG
    with torch.device("meta"):
        model = WanModel(operations=comfy.ops.disable_weight_init, dtype=torch.float32, **config)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    dim = config["dim"]
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("modulation"):
                p.copy_(torch.randn(p.shape, generator=g) / dim ** 0.5)
            elif p.ndim == 1 and name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:                               # norm weights (RMSNorm, cross-attn LayerNorm)
                p.fill_(1.0)
            elif name.startswith("head.head."):
                p.zero_()                                   # zero output head: the model starts at v = 0
            elif name.startswith(("text_embedding.", "time_embedding.")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            else:                                           # xavier uniform (patch conv on its flattened shape)
                fan_out, fan_in = p.shape[0], int(np.prod(p.shape[1:]))
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
        left = [n for n, b in model.named_buffers()]
        assert not left, f"unexpected buffers {left}"
    return model


def object_mask(specs, x0: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, 16, 16] float: 1 where a latent position's 2 x 2 pixels show something other than the background."""
    frames = data.decode_latent(x0)                                                   # [B, T, 3, 32, 32]
    bg = torch.tensor([data.COLOURS[s.background] for s in specs], dtype=frames.dtype).view(-1, 1, 3, 1, 1)
    m = ((frames - bg).abs().amax(dim=2) > 0.05).float()                               # [B, T, 32, 32]
    m = torch.nn.functional.max_pool2d(m.flatten(0, 1)[:, None], 2).view(*m.shape[:2], 16, 16)
    return m[:, None]


def text_embedding_alive(model, prompt: str = "yellow triangle on purple") -> list[int]:
    """How many of the text embedding's first-layer units respond (pre-activation > 0) to the object, empty and
    background tokens of `prompt`. 0 for the object token means the model cannot see the objects' colours or shapes."""
    from demo_model import data as D
    lin = model.text_embedding[0]
    with torch.no_grad():
        pre = D.encode_prompt(prompt) @ lin.weight.detach().float().T + lin.bias.detach().float()
    return (pre > 0).sum(dim=1).tolist()


def sample_t(g: torch.Generator, n: int, shift: float) -> torch.Tensor:
    """Logit-normal(0, 1) pushed towards high noise by the flow shift (t' = s t / (1 + (s-1) t)); 10 % uniform."""
    t = torch.sigmoid(torch.randn(n, generator=g))
    u = torch.rand(n, generator=g)
    t = torch.where(torch.rand(n, generator=g) < 0.1, u, t)
    t = shift * t / (1 + (shift - 1) * t)
    return t.clamp(1e-4, 1.0)


def lr_at(step: int, lr: float, warmup: int, start: int = 0, anneal_to: int | None = None) -> float:
    """Linear warm-up over `warmup` steps counted from `start`; then constant, or, with `anneal_to`, a linear decay
    to lr/10 at step `anneal_to`."""
    value = lr * min(1.0, (step - start + 1) / warmup)
    if anneal_to is not None and anneal_to > start:
        value *= 1.0 - 0.9 * min(1.0, max(0.0, (step - start) / (anneal_to - start)))
    return value


def save_weights(ema_sd: dict, meta: dict, path: pathlib.Path):
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().float().contiguous().clone() for k, v in ema_sd.items()}, str(tmp),
              metadata={k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()})
    os.replace(tmp, path)


def export_float16(src: pathlib.Path, dst: pathlib.Path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata() or {})
    meta["stored_dtype"] = "float16 (from the float32 EMA weights)"
    tmp = dst.with_suffix(".tmp")
    save_file({k: v.half().contiguous() for k, v in load_file(str(src)).items()}, str(tmp), metadata=meta)
    os.replace(tmp, dst)
    print(f"{src} -> {dst} ({dst.stat().st_size / 1e6:.1f} MB, float16)")


SAMPLE_PROMPTS = ("red circle and blue square on green", "yellow triangle on purple", "white square on black",
                  "orange circle and cyan triangle on blue")
SAMPLE_SETTINGS = (dict(sampler_name="uni_pc", shift=8.0, cfg=6.0),              # ComfyUI's Wan template
                   dict(sampler_name="euler_ancestral", shift=3.0, cfg=1.0))


def comfy_sample(model_patcher, prompts, seed=0, steps=30, cfg=6.0, sampler_name="uni_pc", scheduler="simple",
                 shift=8.0):
    """Sample prompts with ComfyUI's own sampler (ModelSamplingSD3 shift like the Wan template). Returns the raw
    LATENT samples [N, 16, 8, 16, 16] as a KSampler outputs them (process_out applied)."""
    import comfy.sample
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    m = ModelSamplingSD3().patch(model_patcher, shift=shift)[0]
    out = []
    with torch.inference_mode():                  # as ComfyUI's executor runs nodes
        for i, text in enumerate(prompts):
            latent = torch.zeros(1, *data.LATENT_SHAPE)
            noise = comfy.sample.prepare_noise(latent, seed + i)
            pos = [[data.encode_prompt(text)[None], {}]]
            neg = [[data.unconditional_context()[None], {}]]
            out.append(comfy.sample.sample(m, noise, steps, cfg, sampler_name, scheduler, pos, neg, latent,
                                           disable_pbar=True, seed=seed + i))
    return torch.cat(out)


def write_sample_grid(weights: str, out_png: str, seed: int = 0):
    """Load `weights` through comfy.sd.load_diffusion_model (must detect WAN21_T2V), sample SAMPLE_PROMPTS with the
    real ComfyUI sampler, decode (process_in first) and save a grid: one reference training clip, then samples."""
    import tempfile
    from devkit import host
    host.boot(tempfile.mkdtemp(prefix="sencache_demo_"), load_pack=False)
    import comfy.latent_formats
    import comfy.sd
    from safetensors import safe_open
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    print(f"booted; loading {weights}", flush=True)
    mp = comfy.sd.load_diffusion_model(weights)
    kind = type(mp.model.model_config).__name__
    assert kind == "WAN21_T2V", kind
    with safe_open(weights, "pt") as f:
        meta = f.metadata()
    t0 = time.time()
    ref_spec, ref_clip = data.sample_pair(np.random.default_rng(12345))
    rows = [(f"training data example: {ref_spec.text()}", torch.from_numpy(ref_clip))]
    for st in SAMPLE_SETTINGS:
        lat = comfy_sample(mp, SAMPLE_PROMPTS, seed=seed, steps=30, scheduler="simple", **st)
        frames = data.decode_latent(comfy.latent_formats.Wan21().process_in(lat))      # [N, T, 3, 32, 32]
        how = f"{st['sampler_name']}, shift {st['shift']:g}, cfg {st['cfg']:g}"
        rows += [(f"{p}   [{how}, seed {seed + i}]", fr) for i, (p, fr) in enumerate(zip(SAMPLE_PROMPTS, frames))]
    secs = time.time() - t0
    T, S, gap = data.NUM_FRAMES, data.FRAME_SIZE, 2
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, len(rows) * 1.25))
    for ax, (title, clip) in zip(axes, rows):
        strip = torch.ones(S, T * (S + gap) - gap, 3)                  # frames side by side, white gaps
        for t in range(T):
            strip[:, t * (S + gap): t * (S + gap) + S] = clip[t].permute(1, 2, 0)
        ax.imshow(strip.numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=9, loc="left")
        ax.axis("off")
    fig.suptitle(f"SenCache demo model ({kind}), step {meta.get('steps')}, train loss {meta.get('loss')}\n"
                 f"ComfyUI sampler, scheduler simple, 30 steps, ModelSamplingSD3 shift; frames 0-7 left to right",
                 fontsize=9)
    fig.tight_layout()
    pathlib.Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    print(f"{kind}: sampled {len(SAMPLE_PROMPTS)} prompts x {len(SAMPLE_SETTINGS)} settings in {secs:.1f} s -> {out_png}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100000, help="stop after this many steps (default: run until killed)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--shift", type=float, default=3.0, help="flow shift applied to the training t distribution")
    ap.add_argument("--object-weight", type=float, default=1.0,
                    help="loss weight of latent positions covered by an object (background positions: 1); > 1 makes "
                         "the model learn the objects' colours and shapes sooner")
    ap.add_argument("--dropout", type=float, default=0.1, help="prompt dropout (zero context) for CFG")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", default=data.DEFAULT_LAYOUT, choices=data.LAYOUTS,
                    help="training data layout (data.random_motion): 'staged' for the demo model, 'free' for the "
                         "validation model")
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true",
                    help="forward and backward under CPU bfloat16 autocast (weights, EMA and AdamW stay float32); "
                         "2.4x faster per step on a CPU with AVX512-BF16")
    ap.add_argument("--stop-at", type=float, default=None, help="unix time: save and stop at the next step past it")
    ap.add_argument("--weights", default=str(WEIGHTS))
    ap.add_argument("--state", default=str(STATE))
    ap.add_argument("--init-from", default=None, metavar="SAFETENSORS",
                    help="start a new phase from saved EMA weights (fresh optimizer, warm-up again; step count taken "
                         "from the file's metadata) when no --state exists: how training continues in another "
                         "session, from the committed weights (the optimizer state is not committed)")
    ap.add_argument("--reinit-text", action="store_true",
                    help="with --init-from: re-initialise the text embedding (as build_model does) before training; "
                         "for weights whose text embedding has died for the object tokens (see text_embedding_alive)")
    ap.add_argument("--text-lr-scale", type=float, default=1.0,
                    help="learning rate of the text embedding's first layer relative to --lr (its input tokens have "
                         "norms of 37-64, so one AdamW step at the full rate moves its pre-activations by ~2 and "
                         "can kill its GELU units for good). != 1 puts it in its own parameter group: pass the same "
                         "value when resuming")
    ap.add_argument("--anneal", action="store_true",
                    help="decay the learning rate linearly to lr/10 at --steps (instead of keeping it constant)")
    ap.add_argument("--dim", type=int, default=None, help="model width (multiple of 128; default 128); ffn 4x")
    ap.add_argument("--layers", type=int, default=None, help="number of transformer blocks (default 4)")
    ap.add_argument("--samples", default=None, metavar="PNG",
                    help="do not train: load --weights via ComfyUI, sample, write a picture grid to PNG")
    ap.add_argument("--export-float16", default=None, metavar="SAFETENSORS",
                    help="do not train: write --weights (EMA, float32) in float16 to this file, metadata kept (half "
                         "the size in the repository; ComfyUI computes in float32 on a CPU either way)")
    args = ap.parse_args(argv)
    if args.export_float16:
        export_float16(pathlib.Path(args.weights), pathlib.Path(args.export_float16))
        return
    if args.samples:
        torch.set_num_threads(args.threads)
        write_sample_grid(args.weights, args.samples)
        return

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    if args.bf16:   # comfy's RMSNorm gets bfloat16 input and float32 weight under autocast: correct, only unfused
        import warnings
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
    from devkit import host
    host.boot(None, load_pack=False)

    config = model_config(args.dim, args.layers)
    model = build_model(args.seed, config)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if args.text_lr_scale != 1.0:
        slow = [p for n, p in model.named_parameters() if n.startswith("text_embedding.0.")]
        rest = [p for n, p in model.named_parameters() if not n.startswith("text_embedding.0.")]
        groups = [dict(params=rest, lr_scale=1.0), dict(params=slow, lr_scale=args.text_lr_scale)]
    else:
        groups = [dict(params=list(model.parameters()), lr_scale=1.0)]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    step, elapsed, loss_avg, history = 0, 0.0, None, []
    cpu_before = 0.0                  # CPU seconds of earlier processes of this phase (resumed)
    state_path = pathlib.Path(args.state)
    if state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        ema = st["ema"]
        opt.load_state_dict(st["opt"])
        step, elapsed, loss_avg, history = st["step"], st["elapsed"], st["loss_avg"], st["history"]
        cpu_before = float(st.get("cpu_seconds", 0.0))
        print(f"resumed from {state_path} at step {step} ({elapsed / 60:.1f} min so far)", flush=True)
    elif args.init_from:
        from safetensors import safe_open
        from safetensors.torch import load_file
        sd = load_file(args.init_from)
        with safe_open(args.init_from, "pt") as f:
            meta = f.metadata() or {}
        model.load_state_dict(sd)
        if args.reinit_text:
            fresh = build_model(args.seed, config).state_dict()
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if k.startswith("text_embedding."):
                        v.copy_(fresh[k])
            print("text embedding re-initialised", flush=True)
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        step = int(meta.get("steps", 0))
        elapsed = float(meta.get("train_minutes", 0.0)) * 60.0
        loss_avg = float(meta["loss"]) if "loss" in meta else None
        print(f"new phase from {args.init_from} (step {step}): fresh optimizer, warm-up {args.warmup}", flush=True)
    resumed = state_path.exists()
    init_from_name = st.get("init_from", "") if resumed else (pathlib.Path(args.init_from).name if args.init_from else "")
    # the step where the current training phase began (warm-up and --anneal are counted from there)
    phase_start = st.get("phase_start", 0) if resumed else step
    n_params = sum(p.numel() for p in model.parameters())
    print(f"WanModel {n_params / 1e6:.2f} M params; batch {args.batch}; lr {args.lr}; threads {args.threads}", flush=True)

    def cpu_seconds() -> float:
        return cpu_before + time.process_time()

    def checkpoint():
        meta = {
            "sencache_demo": "SenCache demo model (tiny Wan 2.1 T2V) - see demo_model/README.md",
            "config": json.dumps(config), "dropout": str(args.dropout), "data": DATA_DESCRIPTION, "layout": args.layout, "steps": str(step),
            "phase_start": str(phase_start), "init_from": init_from_name,
            "loss": f"{loss_avg:.5f}", "seed": str(args.seed), "batch": str(args.batch),
            "train_minutes": f"{elapsed / 60:.1f}",
            "cpu_minutes_this_phase": f"{cpu_seconds() / 60:.1f}", "threads": str(args.threads),
            "objective": "rectified flow, x_t=(1-t)x0+t*eps, v=eps-x0, timestep=1000t (ComfyUI CONST/FLOW)",
            "weights": f"EMA decay {args.ema}", "bf16_autocast": str(args.bf16), "object_weight": str(args.object_weight), "lr": str(args.lr), "text_lr_scale": str(args.text_lr_scale), "train_shift": str(args.shift),
            "sampling": "ModelSamplingSD3 shift 8, uni_pc, simple, 30 steps, cfg 6; negative = zeros [1,3,4096]",
            "latent_shape": json.dumps(list(data.LATENT_SHAPE)),
        }
        save_weights(ema, meta, pathlib.Path(args.weights))
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        torch.save(dict(model=model.state_dict(), ema=ema, opt=opt.state_dict(), step=step, elapsed=elapsed,
                        loss_avg=loss_avg, history=history, args=vars(args),
                        phase_start=phase_start, init_from=init_from_name, cpu_seconds=cpu_seconds()), tmp)
        os.replace(tmp, state_path)
        print(f"checkpoint step {step} loss {loss_avg:.4f} -> {args.weights}", flush=True)

    import signal
    stop_flag = []
    signal.signal(signal.SIGTERM, lambda *a: stop_flag.append(1))   # kill <pid>: checkpoint, then exit

    model.train()
    params = dict(model.named_parameters())
    while step < args.steps:
        t0 = time.time()
        rng = np.random.default_rng([args.seed, step])        # per-step streams: resuming is exact
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        specs, ctx, x0 = data.sample_batch(rng, args.batch, args.layout)
        drop = torch.rand(args.batch, generator=g) < args.dropout
        ctx = torch.where(drop[:, None, None], torch.zeros_like(ctx), ctx)
        t = sample_t(g, args.batch, args.shift)
        eps = torch.randn(x0.shape, generator=g)
        tt = t.view(-1, 1, 1, 1, 1)
        xt = (1 - tt) * x0 + tt * eps
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            v = model(xt, t * 1000.0, ctx)
        v = v.float()
        if args.object_weight != 1.0:
            w = 1.0 + (args.object_weight - 1.0) * object_mask(specs, x0)
            loss = (w * (v - (eps - x0)) ** 2).mean() / w.mean()
        else:
            loss = torch.nn.functional.mse_loss(v, eps - x0)
        for group in opt.param_groups:
            group["lr"] = group.get("lr_scale", 1.0) * lr_at(step, args.lr, args.warmup, phase_start,
                                                             args.steps if args.anneal else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, e in ema.items():
                e.mul_(decay).add_(params[k].detach(), alpha=1 - decay)
        step += 1
        elapsed += time.time() - t0
        lv = float(loss.detach())
        loss_avg = lv if loss_avg is None else 0.99 * loss_avg + 0.01 * lv
        if step % 20 == 0:
            history.append((step, round(loss_avg, 5)))
            print(f"step {step} loss {lv:.4f} avg {loss_avg:.4f} {elapsed / step:.2f} s/step "
                  f"elapsed {elapsed / 60:.1f} min text units alive (object, empty, background) "
                  f"{text_embedding_alive(model)}", flush=True)
        stop = bool(stop_flag) or (args.stop_at is not None and time.time() >= args.stop_at)
        if step % args.save_every == 0 or step >= args.steps or stop:
            checkpoint()
        if stop:
            print("stopped (SIGTERM or --stop-at)", flush=True)
            break


if __name__ == "__main__":
    main()
