"""The caching wrappers' own cost per model evaluation, with a zero-cost stand-in model.

    .dev/venv/bin/python -m bench overhead [--before DIR] [--device cpu|cuda] [--out results/speed/overhead-cpu.md]

The latent is Wan 2.1 1.3B's at 480p, 81 frames: [B, 16, 21, 60, 104] (B = 2 with CFG: cond and uncond batched; 1
without). The "model" returns a preallocated tensor (no computation), so what is timed is the wrapper alone: its
decision, its host-device transfers, its cache copies. Each method runs a 50-step flow schedule (shift 5) through
ComfyUI's own WrapperExecutor, as the sampler's DIFFUSION_MODEL call does; the latent moves between evaluations
(x += Δσ·v, outside the timed region), so a share of the evaluations is reused. Rows:
- no wrapper: the stand-in called through an executor without wrappers (the floor);
- SenCache (this tree) and, with --before DIR, SenCache from another tree of this pack (e.g. `git archive main`);
- core EasyCache: comfy_extras.nodes_easycache's forward wrapper (ComfyUI's own), threshold 0.2, subsample 8.
Per evaluation: median µs of computed and of reused evaluations over `--repeats` runs per method (methods
interleaved, after one warm-up round), and the mean over all evaluations. On CPU the clock is the calling thread's
CPU time (torch runs single-threaded on it); on CUDA wall time, each timed evaluation ending with a synchronize, so
the wrapper's kernels and any stall it causes are counted.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import pathlib
import platform
import statistics
import sys
import time

import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHAPE = (16, 21, 60, 104)
STEPS, SHIFT = 50, 5.0


class MS:
    """model_sampling of a flow model (σ = t): what the wrappers ask it."""
    @staticmethod
    def percent_to_sigma(p):
        return 1.0 - p


def schedule(n=STEPS, shift=SHIFT):
    t = torch.linspace(1.0, 0.0, n + 1)
    return shift * t / (1 + (shift - 1) * t)


def profile_for(core):
    """A synthetic profile over σ ∈ [0.01, 1] (α_x = 1, α_t = 1): with Δx ≈ Δσ per step it reuses about half."""
    import numpy as np
    s = np.linspace(0.01, 1.0, 20)
    one = np.ones_like(s)
    return core.SensitivityProfile(sigmas=s, alpha_x=one, alpha_t=one, alpha_x_hi=one, alpha_t_hi=one,
                                   dx_per_sigma=one, counts=np.full(20, 2), metadata={"latent_channels": 16})


def load_pack(path: pathlib.Path):
    """A tree of this pack loaded through ComfyUI's custom-node loader; returns (runtime, core) modules."""
    import nodes
    name = str(path).replace(".", "_x_")
    if name not in sys.modules:
        if not asyncio.run(nodes.load_custom_node(str(path), module_parent="custom_nodes")):
            raise RuntimeError(f"could not load the pack at {path}")
    return importlib.import_module(f"{name}.nodes.runtime"), importlib.import_module(f"{name}.sencache_core")


class Scene:
    """The tensors of one scenario (with or without CFG), shared by every method."""

    def __init__(self, device, cfg: bool):
        self.B = 2 if cfg else 1
        gen = torch.Generator(device="cpu").manual_seed(0)
        self.v = torch.randn((self.B, *SHAPE), generator=gen).to(device)
        self.x0 = torch.randn((self.B, *SHAPE), generator=gen).to(device)
        self.out_buf = torch.randn((self.B, *SHAPE), generator=gen).to(device)
        self.context = torch.zeros(self.B, 4, 8, device=device)
        self.uuids, self.cou = (["u", "c"], [1, 0]) if cfg else (["c"], [0])
        self.device = device


def drive(scene: Scene, make_run, wrappers, clock):
    """One run of the schedule; returns (computed µs list, reused µs list)."""
    import comfy.patcher_extension as pe
    calls = [0]

    def stand_in(x, timestep, context, transformer_options={}, **kwargs):
        calls[0] += 1
        return scene.out_buf

    dev = scene.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    sig = schedule()
    comp, reus = [], []
    x = scene.x0.clone()
    to_base, begin = make_run(sig)
    for i in range(STEPS):
        s = sig[i].view(1).to(dev)
        to = dict(to_base, sigmas=s, uuids=scene.uuids, cond_or_uncond=scene.cou)
        t = s.repeat(scene.B) * 1000
        ex = pe.WrapperExecutor.new_executor(stand_in, list(wrappers))
        n0 = calls[0]
        sync()
        t0 = clock()
        begin()
        ex.execute(x, t, scene.context, to)
        sync()
        dt = (clock() - t0) * 1e6
        (comp if calls[0] > n0 else reus).append(dt)
        x.add_(scene.v, alpha=float(sig[i + 1] - sig[i]))
    return comp, reus


def sencache_method(R, core, mode: str, eps: float = 0.1):
    prof = profile_for(core)
    settings = R.SenCacheSettings(eps_start=eps, eps_main=eps, max_consecutive=3, reuse_mode=mode)

    def make_run(sig):
        holder = R.SenCacheHolder(prof, settings, 16)
        run = R.RunState(holder, MS, sig)
        return {R.RUN_KEY: run}, run.begin_evaluation
    return make_run, [R.diffusion_model_wrapper]


def easycache_method():
    from comfy_extras import nodes_easycache as E

    def make_run(sig):
        holder = E.EasyCacheHolder(0.2, 0.15, 0.95, subsample_factor=8, offload_cache_diff=False,
                                   output_channels=16).clone().prepare_timesteps(MS)
        return {"easycache": holder}, (lambda: None)
    return make_run, [E.easycache_forward_wrapper]


def none_method():
    return (lambda sig: ({}, lambda: None)), []


def fmt(v):
    return "–" if v is None else f"{v:,.0f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default=None, help="another tree of this pack to measure too (e.g. main's)")
    ap.add_argument("--before-label", default="SenCache before")
    ap.add_argument("--after-label", default="SenCache after")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import logging
    logging.getLogger().setLevel(logging.ERROR)
    from devkit import host
    import tempfile
    host.boot(tempfile.mkdtemp(prefix="sencache_overhead_"), cpu=device.type == "cpu")
    packs = []
    if args.before:
        packs.append((args.before_label, *load_pack(pathlib.Path(args.before).resolve())))
    after = host.pack_module()
    packs.append((args.after_label, importlib.import_module(f"{after.__name__}.nodes.runtime"),
                  importlib.import_module(f"{after.__name__}.sencache_core")))

    # CPU: the calling thread's CPU time (torch runs on it with 1 thread), which other processes on a shared machine
    # disturb far less than wall time; CUDA: wall time up to a synchronize
    clock = time.thread_time if device.type == "cpu" else time.perf_counter
    rows = []
    for cfg in (True, False):
        scene = Scene(device, cfg)
        methods = [("no wrapper", none_method())]
        for label, R, core in packs:
            mode = "output" if cfg else "output_extrapolated"
            methods.append((f"{label} ({mode})", sencache_method(R, core, mode)))
            methods.append((f"{label} (ε = 0)", sencache_method(R, core, "output", eps=0.0)))
        methods.append(("core EasyCache", easycache_method()))
        got = {name: ([], []) for name, _ in methods}
        for r in range(args.repeats + 1):               # methods interleaved; the first round is warm-up
            for name, (make_run, wrappers) in methods:
                comp, reus = drive(scene, make_run, wrappers, clock)
                if r > 0:
                    got[name][0].extend(comp)
                    got[name][1].extend(reus)
        for name, _ in methods:
            comp, reus = got[name]
            allv = comp + reus
            rows.append({"cfg": cfg, "method": name, "computed": len(comp) // args.repeats,
                         "reused": len(reus) // args.repeats,
                         "us_computed": statistics.median(comp) if comp else None,
                         "us_reused": statistics.median(reus) if reus else None,
                         "us_mean": statistics.fmean(allv) if allv else None})
            print(f"  {'CFG' if cfg else 'no CFG'} {name}: {rows[-1]['computed']} computed, {rows[-1]['reused']} reused",
                  flush=True)
        del scene
    base = {r["cfg"]: r["us_mean"] for r in rows if r["method"] == "no wrapper"}
    lines = [f"Wrapper cost per model evaluation, zero-cost stand-in model, latent [B, {', '.join(map(str, SHAPE))}] "
             f"(Wan 2.1 1.3B, 480p, 81 frames), {STEPS} steps (shift {SHIFT:g}), device {device} "
             f"({platform.processor() or platform.machine()}, {args.threads} thread(s)), torch {torch.__version__}; "
             f"{'CPU time of the calling thread' if device.type == 'cpu' else 'wall time to a synchronize'}, "
             f"median over the evaluations of {args.repeats} interleaved runs per method after a warm-up round; "
             "mean = all evaluations of a run (computed and reused).", "",
             "| run | method | computed / reused | µs per computed eval | µs per reused eval | mean µs per eval | "
             "mean over no wrapper |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        over = None if r["us_mean"] is None else r["us_mean"] - base[r["cfg"]]
        lines.append(f"| {'CFG (B = 2)' if r['cfg'] else 'no CFG (B = 1)'} | {r['method']} | {r['computed']} / "
                     f"{r['reused']} | {fmt(r['us_computed'])} | {fmt(r['us_reused'])} | {fmt(r['us_mean'])} | "
                     f"{'+' if over is not None and over >= 0 else ''}{fmt(over)} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        import shlex
        command = "python -m bench overhead " + shlex.join(argv if argv is not None else sys.argv[1:])
        out.write_text(f"# Wrapper overhead per evaluation ({device.type})\n\nCommand: `{command}`\n\n{text}\n")
    return rows


if __name__ == "__main__":
    main()
