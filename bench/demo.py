"""The SenCache demo: the demo workflow executed by ComfyUI's own execution engine, uncached and with SenCache.

    scripts/demo.sh                       # = bash scripts/setup.sh && .dev/venv/bin/python -m bench demo
    .dev/venv/bin/python -m bench demo --out output/demo --repeats 3

The API-format graphs come from bench/demo_graph.py (UNETLoader -> ModelSamplingSD3 shift 8 -> [SenCache] ->
KSampler uni_pc/simple/30 steps/cfg 6 with SenCacheDemoPrompt + ConditioningZeroOut -> SenCacheDemoDecode ->
SaveImage + SaveAnimatedWEBP) and run in-process through `execution.PromptExecutor` (ComfyUI's own executor, as
ComfyUI's tests use it) with the node cache off, so every repeat really runs every node. Same seed and settings for
both; the SenCache profile is the committed demo_model/weights/sencache_demo_wan_profile.safetensors (made by
`--make-profile` with the SenCacheCalibrator node on its own prompt and seeds), or, with --calibrate-in-graph or when
that file is missing, a SenCacheCalibrator node inside the graph (its own seeds, not the demo's).

Writes to --out: uncached.webp / sencache.webp (ComfyUI's SaveAnimatedWEBP), uncached.gif / sencache.gif,
side_by_side.png (rows: uncached, SenCache, |difference| x4), sencache_run.png and sencache_profile.png
(the SenCache Visualizer node's plot, nodes/plotting.py), trace.json, the two API graphs, report.md. Prints the folder.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import json
import logging
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import common as C  # noqa: E402
from bench import demo_graph as G  # noqa: E402

COMMITTED_PROFILE = REPO / "demo_model" / "weights" / G.PROFILE_NAME
log = logging.getLogger("SenCache.demo")


class DummyServer:
    """What PromptExecutor needs from PromptServer (as in ComfyUI's own execution tests)."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class Runner:
    def __init__(self):
        import execution
        import nodes
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)          # core nodes that need torchaudio fail to import here: not ours to report
        try:
            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        finally:
            root.setLevel(level)
        self.server = DummyServer()
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.NONE,
                                                 cache_args={"lru": 0, "ram": 0})
        self.sample_seconds = []
        import comfy.sample
        orig = comfy.sample.sample

        def timed(*a, **k):                       # times the sampler call inside KSampler (bench-only probe)
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                self.sample_seconds.append(time.perf_counter() - t0)
        comfy.sample.sample = timed
        self._orig = orig

    def run(self, graph: dict) -> tuple[dict, float]:
        import execution
        ok, err, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), graph, None))
        if not ok:
            raise RuntimeError(f"ComfyUI refused the demo graph: {err} {node_errors}")
        t0, c0 = time.perf_counter(), time.process_time()
        self.executor.execute(graph, str(uuid.uuid4()), {}, outputs)
        secs = time.perf_counter() - t0
        self.last_cpu = time.process_time() - c0
        if not self.executor.success:
            errs = [d for e, d in self.executor.status_messages if e == "execution_error"]
            raise RuntimeError(f"ComfyUI failed to run the demo graph: {errs}")
        return self.executor.history_result["outputs"], secs

    def close(self):
        import comfy.sample
        comfy.sample.sample = self._orig


def _files(outputs: dict, node: str, key: str = "images") -> list[pathlib.Path]:
    import folder_paths
    out = []
    for it in outputs.get(node, {}).get(key, []):
        base = folder_paths.get_output_directory() if it.get("type", "output") == "output" else folder_paths.get_temp_directory()
        out.append(pathlib.Path(base) / it.get("subfolder", "") / it["filename"])
    return out


def _load_frames(paths, upscale: int) -> torch.Tensor:
    """Saved PNG frames -> native-resolution frames [T, 3, 32, 32] in 0..1 (8-bit, what the user gets)."""
    from PIL import Image
    arr = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)[::upscale, ::upscale] / 255.0 for p in paths]
    return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).contiguous()


def _to_pil(frames: torch.Tensor, scale: int = 4):
    from PIL import Image
    a = (frames.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    return [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in a]


def _gif(frames, path, fps=8):
    ims = _to_pil(frames)
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=int(1000 / fps), loop=0)


def _side_by_side(a, b, path, labels=("uncached", "SenCache", "|difference| x4")):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [a, b, ((a - b).abs() * 4).clamp(0, 1)]
    T = a.shape[0]
    fig, axes = plt.subplots(3, T, figsize=(T * 1.3, 3 * 1.45))
    for r, (clip, lab) in enumerate(zip(rows, labels)):
        for t in range(T):
            ax = axes[r, t]
            ax.imshow(clip[t].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(lab, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save_rgb(arr: np.ndarray, path):
    from PIL import Image
    a = arr if arr.dtype == np.uint8 else (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(a[..., :3]).save(path)


def make_profile(runner: Runner, args, sc) -> pathlib.Path:
    """Run the calibration graph (SenCacheCalibrator -> SenCacheSaveProfile) and return the saved file."""
    import folder_paths
    g = G.calibration_graph(seed=args.calibration_seed, runs=args.calibration_runs, steps=args.steps, cfg=args.cfg,
                            sampler=args.sampler, scheduler=args.scheduler, shift=args.shift,
                            save_as="sencache_demo_wan_profile_new")
    runner.run(g)
    d = pathlib.Path(folder_paths.get_folder_paths("sencache")[0])
    return sorted(d.glob("sencache_demo_wan_profile_new_*.safetensors"))[-1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "output" / "demo"))
    ap.add_argument("--text", default="red circle and blue square on green")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--cfg", type=float, default=6.0)
    ap.add_argument("--sampler", default="uni_pc")
    ap.add_argument("--scheduler", default="simple")
    ap.add_argument("--shift", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3, help="timed executions of each graph (alternating order)")
    ap.add_argument("--eps-main", type=float, default=None, help="SenCache eps_main (default: the node's default)")
    ap.add_argument("--eps-start", type=float, default=None)
    ap.add_argument("--max-consecutive", type=int, default=None)
    ap.add_argument("--reuse-mode", default=None, choices=("output_extrapolated", "output", "output_minus_input"),
                    help="default: the node's default (output_extrapolated: identical to output at the demo's CFG 6)")
    ap.add_argument("--target-speedup", type=float, default=2.0,
                    help="SenCache target_speedup input (> 0: ε derived per run for about steps/target evaluations)")
    ap.add_argument("--weights", default=str(C.WEIGHTS),
                    help="'demo', 'validation' (the second model, bench/common.MODELS) or a safetensors path")
    ap.add_argument("--profile", default=str(COMMITTED_PROFILE), help="profile file to use (copied into models/sencache)")
    ap.add_argument("--calibrate-in-graph", action="store_true",
                    help="profile from a SenCacheCalibrator node in the graph (its own seeds) instead of --profile")
    ap.add_argument("--calibration-seed", type=int, default=5000)
    ap.add_argument("--calibration-runs", type=int, default=4)
    ap.add_argument("--make-profile", action="store_true",
                    help=f"calibrate with the SenCacheCalibrator node and write {COMMITTED_PROFILE.relative_to(REPO)}")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    args.weights = str(C.resolve_weights(args.weights))
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)
    base = pathlib.Path(tempfile.mkdtemp(prefix="sencache_demo_"))
    nodes, sc, _ = C.boot(base, weights=args.weights)
    logging.getLogger().setLevel(logging.WARNING)
    import comfy.utils
    comfy.utils.PROGRESS_BAR_ENABLED = False
    runner = Runner()
    import folder_paths
    prof_dir = pathlib.Path(folder_paths.get_folder_paths("sencache")[0])
    prof_dir.mkdir(parents=True, exist_ok=True)

    if args.make_profile:
        made = make_profile(runner, args, sc)
        shutil.copy2(made, COMMITTED_PROFILE)
        print(f"profile written: {COMMITTED_PROFILE}")
        print(sc.core.SensitivityProfile.load(COMMITTED_PROFILE).describe())
        return COMMITTED_PROFILE

    sencache = {k: v for k, v in dict(eps_main=args.eps_main, eps_start=args.eps_start,
                                      max_consecutive_reuse=args.max_consecutive, reuse_mode=args.reuse_mode,
                                      target_speedup=args.target_speedup).items()
                if v is not None}
    common = dict(text=args.text, seed=args.seed, steps=args.steps, cfg=args.cfg, sampler=args.sampler,
                  scheduler=args.scheduler, shift=args.shift)
    profile_path = pathlib.Path(args.profile)
    calibrate = None
    if args.calibrate_in_graph or not profile_path.exists():
        calibrate = {"seed": args.calibration_seed, "runs": args.calibration_runs}
        profile_source = (f"SenCacheCalibrator node in the graph (prompt '{G.calibration_graph()['12']['inputs']['text']}'"
                          f" seeds {args.calibration_seed}..{args.calibration_seed + args.calibration_runs - 1}, same sampler"
                          " settings)" + ("" if args.calibrate_in_graph else f"; {profile_path} not found"))
        # calibrate once (graph with the calibrator + save), then load that file in the timed runs
        made = make_profile(runner, args, sc)
        prof_name = made.name
    else:
        shutil.copy2(profile_path, prof_dir / G.PROFILE_NAME)
        prof_name = G.PROFILE_NAME
        profile_source = f"{profile_path.relative_to(REPO) if profile_path.is_relative_to(REPO) else profile_path}"
    graphs = {"uncached": G.demo_graph(**common, prefix="uncached"),
              "sencache": G.demo_graph(**common, sencache=sencache, profile=prof_name, prefix="sencache")}
    for name, g in graphs.items():
        (out / f"graph_{name}_api.json").write_text(json.dumps(g, indent=1))

    times = {"uncached": [], "sencache": []}
    cpu_times = {"uncached": [], "sencache": []}
    sampler_times = {"uncached": [], "sencache": []}
    last = {}
    if args.repeats > 1:
        runner.run(graphs["uncached"])        # warm-up (first-call overheads), not timed
    for r in range(args.repeats):
        order = ("uncached", "sencache") if r % 2 == 0 else ("sencache", "uncached")
        for name in order:
            n0 = len(runner.sample_seconds)
            outputs, secs = runner.run(graphs[name])
            times[name].append(secs)
            cpu_times[name].append(runner.last_cpu)
            sampler_times[name].append(sum(runner.sample_seconds[n0:]))
            last[name] = outputs
    runner.close()

    # one more (untimed) SenCache run with the Visualizer: the plot and the trace as the product shows them
    vis_outputs, _ = runner.run(G.demo_graph(**common, sencache=sencache, profile=prof_name, prefix="sencache_vis",
                                             visualize=True))
    trace = vis_outputs[G.NODE_VISUALIZER]["sencache_trace"][0]
    profile = sc.core.SensitivityProfile.load(prof_dir / prof_name)
    frames = {n: _load_frames(_files(last[n], G.NODE_FRAMES), 4) for n in last}
    vis_frames = _load_frames(_files(vis_outputs, G.NODE_FRAMES), 4)
    if not torch.equal(vis_frames, frames["sencache"]):
        print("note: the Visualizer run's frames differ from the timed SenCache run's")
    psnr, ssim = C.psnr(frames["sencache"], frames["uncached"]), C.ssim(frames["sencache"], frames["uncached"])
    for n in last:
        webp = _files(last[n], G.NODE_WEBP)
        if webp:
            shutil.copy2(webp[0], out / f"{n}.webp")
        _gif(frames[n], out / f"{n}.gif")
    _side_by_side(frames["uncached"], frames["sencache"], out / "side_by_side.png")
    plots = []
    plot_files = _files(vis_outputs, G.NODE_PLOT)
    if plot_files:
        shutil.copy2(plot_files[0], out / "sencache_run.png")
        plots.append("sencache_run.png")
    if sc.plotting is not None:
        try:
            _save_rgb(sc.plotting.render_profile(profile, title="demo profile"), out / "sencache_profile.png")
            plots.append("sencache_profile.png")
        except Exception as e:          # plots are a bonus; never lose the report over them
            print(f"plotting failed: {e}")
    (out / "trace.json").write_text(json.dumps(trace, indent=1, default=str))

    med = {n: statistics.median(v) for n, v in times.items()}
    smed = {n: statistics.median(v) for n, v in sampler_times.items()}
    cmed = {n: statistics.median(v) for n, v in cpu_times.items()}
    w = C.weights_info(args.weights)
    st = dict(G.SENCACHE_DEFAULTS, **sencache)
    speedup = importlib.import_module(f"{sc.pack.__name__}.nodes.speedup")   # the pack's one definition
    eval_ratio = trace["total"] / trace["computed"] if trace["computed"] else None
    # CPU time of this process: other jobs on a shared machine stretch the wall clock, much less the CPU time
    measured = speedup.measured_repeats(cpu_times["uncached"], cpu_times["sencache"], eval_ratio)
    estimate = trace.get("speedup_text") or "not available"
    lines = [
        "# SenCache demo", "",
        f"Workflow (bench/demo_graph.py, run by ComfyUI's PromptExecutor in-process, node cache off): UNETLoader "
        f"`{G.WEIGHTS_NAME}` → ModelSamplingSD3 (shift {args.shift:g}) → [SenCache] → KSampler ({args.sampler}, "
        f"{args.scheduler}, {args.steps} steps, CFG {args.cfg:g}, seed {args.seed}) → SenCacheDemoDecode → SaveImage / "
        f"SaveAnimatedWEBP. Prompt: \"{args.text}\".", "",
        f"- Weights: sha256 `{w['sha256']}`, training steps {w['training_steps']} (loss {w['loss']}).",
        f"- SenCache inputs: eps_main {st['eps_main']}, eps_start {st['eps_start']}, K {st['max_consecutive_reuse']}, reuse mode "
        f"{st['reuse_mode']}, target_speedup {st['target_speedup']}"
        + (f" (in effect, derived from the target: eps_main {trace['settings']['eps_main']:.4g}, eps_start "
           f"{trace['settings']['eps_start']:.4g}, K {trace['settings']['max_consecutive']})" if st['target_speedup'] else "")
        + f"; profile: {profile_source} — {profile.describe()}.",
        f"- Model evaluations: uncached {args.steps}; SenCache computed **{trace['computed']} of {trace['total']}** "
        f"(reused {trace['reused']}).",
        f"- Speed: **{measured.text()}**. The whole graph on this CPU ({args.threads} torch thread"
        f"{'s' if args.threads != 1 else ''}, a machine shared "
        f"with other jobs), CPU time of this process: uncached {cmed['uncached']:.2f} s, SenCache "
        f"{cmed['sencache']:.2f} s; evaluation ratio "
        + (f"{eval_ratio:.2f}× ({trace['total']}/{trace['computed']}), the most skipping evaluations can save. "
           if eval_ratio else "not available. ")
        + f"All repeats, CPU (s): uncached {[round(v, 2) for v in cpu_times['uncached']]}, SenCache "
        f"{[round(v, 2) for v in cpu_times['sencache']]}; wall (s): uncached {[round(v, 2) for v in times['uncached']]}, "
        f"SenCache {[round(v, 2) for v in times['sencache']]} (medians {med['uncached']:.2f} s vs "
        f"{med['sencache']:.2f} s). Wall time inside the KSampler call: {smed['uncached']:.2f} s vs "
        f"{smed['sencache']:.2f} s. The Visualizer's own figure for its run, which has no uncached twin: {estimate}.",
        f"- Quality of SenCache vs uncached (8-bit frames as saved, native 32×32): PSNR **{psnr:.2f} dB**, "
        f"SSIM **{ssim:.4f}**.", "",
        "Files: `uncached.webp`, `sencache.webp` (ComfyUI SaveAnimatedWEBP), `uncached.gif`, `sencache.gif`, "
        "`side_by_side.png` (rows: uncached, SenCache, |difference| ×4)"
        + (", " + ", ".join(f"`{p}`" for p in plots) if plots else "")
        + ", `trace.json` (per-evaluation decisions), `graph_uncached_api.json`, `graph_sencache_api.json`.", "",
        "For how SenCache compares with other caching methods and with fewer steps at equal evaluation counts, see "
        "results/quality/ (bench/quality.py).", "",
        f"Generated {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC in "
        f"{time.perf_counter() - t_start:.0f} s.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    shutil.rmtree(base, ignore_errors=True)
    print("\n".join(lines[4:9]))
    print(f"\nSenCache demo written to: {out}")
    return out


if __name__ == "__main__":
    main()
