"""Speed at real scale: wall-clock speed-up and overhead of SenCache (and core EasyCache) through the real
ComfyUI sampler.

    .dev/venv/bin/python -m bench speed --size full      # Wan 2.1 1.3B size, 480p 81 frames, bf16, on a CUDA GPU
    .dev/venv/bin/python -m bench speed --size reduced   # tiny Wan, small latent, any device (part of the tests)

(scripts/bench_speed.sh does the set-up first.) What it does, in order:
1. Builds a WanModel of the requested size from ComfyUI's own class on the meta device, fills seeded random
   weights directly on the target device, saves it as a safetensors checkpoint in a temporary folder and loads
   it back through comfy.sd.load_diffusion_model (as UNETLoader does), then ModelSamplingSD3(shift 8).
2. Calibrates a sensitivity profile with the pack's Calibrator (1 run, same schedule; doubles as warm-up) and
   records the uncached trajectory, from which both caches' decisions can be simulated offline: that predicts
   the ε (SenCache) and reuse_threshold (EasyCache) that give the requested model-evaluation counts, so the
   search needs few real runs. Real runs then correct the prediction (bisection) until the realised count
   is within ±1 of the target; realised counts are always the ones reported.
3. Times, through comfy.sample.sample (KSampler semantics): uncached, SenCache at 2× and 3× evaluation
   budgets, core EasyCache (comfy_extras.nodes_easycache.EasyCacheNode) at the same counts, and SenCache with
   ε = 0 (every step computed: the cache's pure overhead). Medians over repeats.

Instrumentation, identical in every run (uncached included), so it cancels in every comparison:
- a CALC_COND_BATCH wrapper numbers the evaluations (Python counter, no device sync);
- an outermost and an innermost DIFFUSION_MODEL wrapper (keyed; the cache's own wrapper sits between them)
  time each call without synchronising: CUDA events on the stream (read after the run), perf_counter on the
  CPU. inner = one model call; outer − inner = the time the cache's wrapper itself adds to the GPU timeline
  (its kernels, plus the idle gaps its host-side work and its own syncs leave). The same difference in the
  uncached run (an empty wrapper chain) is the instrumentation's own floor and is subtracted.
- a second, independent overhead estimate: (wall(SenCache ε=0) − wall(uncached)) / evaluations, which also
  holds what happens outside the wrapper (e.g. host/device overlap lost to the cache's syncs).
Peak memory: torch.cuda.max_memory_allocated, reset before every run (GPU only).

Results: results/speed/<device>-<size>.md and .json (device name, torch and ComfyUI versions, table).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time

T_START = time.perf_counter()
REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# --------------------------------------------------------------------------------------------------------
# Sizes. "full" = Wan 2.1 T2V 1.3B (dim 1536, ffn 8960, 30 layers, 12 heads) at 480p × 81 frames
# (latent 16×21×60×104), 512 text tokens, 30 steps uni_pc/simple, CFG 6, shift 8 (ComfyUI's Wan template).
SIZES = {
    "full": dict(model=dict(dim=1536, ffn_dim=8960, num_layers=30, num_heads=12), latent=(16, 21, 60, 104),
                 text_tokens=512, time_limit=460.0, max_search_runs=3, repeats=2),
    "reduced": dict(model=dict(dim=128, ffn_dim=256, num_layers=2, num_heads=1), latent=(16, 3, 16, 16),
                    text_tokens=16, time_limit=240.0, max_search_runs=6, repeats=2),
}
WAN_COMMON = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, out_dim=16, freq_dim=256,
                  text_dim=4096, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)
STEPS, CFG, SAMPLER, SCHEDULER, SHIFT, SEED = 30, 6.0, "uni_pc", "simple", 8.0, 0
BUDGETS = (2, 3)   # speed-up in model evaluations: 30 → 15 and 30 → 10


def flops_per_eval(model_kw: dict, latent: tuple, text_tokens: int, batch: int = 2) -> float:
    """Matmul FLOPs of one evaluation (CFG: cond + uncond) of the Wan DiT: per block, self-attention q/k/v/o and
    cross-attention q/o on the L video tokens, cross k/v on the text tokens, the FFN, and the two attention
    products (4·L²·d self, 4·L·T·d cross). Embeddings and the head are negligible."""
    d, ffn, n = model_kw["dim"], model_kw["ffn_dim"], model_kw["num_layers"]
    _, f, h, w = latent
    L, T = f * (h // 2) * (w // 2), text_tokens
    per_block = 2 * L * (6 * d * d + 2 * d * ffn) + 2 * T * 2 * d * d + 4 * L * L * d + 4 * L * T * d
    return float(batch * n * per_block)


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - T_START:7.1f}s] {msg}", flush=True)


# ---- device and versions ----------------------------------------------------------------------------------
def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def comfyui_version() -> str:
    try:
        import comfyui_version
        return comfyui_version.__version__
    except Exception:
        return "unknown"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ---- model -----------------------------------------------------------------------------------------------
def build_checkpoint(folder: pathlib.Path, model_kw: dict, dev: torch.device, dtype: torch.dtype, seed: int = 0,
                     scale: float = 0.05) -> pathlib.Path:
    """WanModel from ComfyUI's own class, built on meta, materialised on `dev` in `dtype` with seeded random
    weights (small std so 30 blocks of activations stay finite in bf16), saved as a diffusion_models
    safetensors file."""
    import comfy.ops
    from comfy.ldm.wan.model import WanModel
    from safetensors.torch import save_file
    with torch.device("meta"):
        module = WanModel(operations=comfy.ops.disable_weight_init, dtype=dtype, **WAN_COMMON, **model_kw)
    module = module.to_empty(device=dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.state_dict(keep_vars=True).items()):
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif p.ndim == 1 and name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g, device=dev, dtype=torch.float32) * 0.01)
            else:
                fan_in = p.shape[-1] if p.ndim >= 2 else 1
                std = scale if p.ndim < 2 else min(scale, 1.0 / fan_in ** 0.5)
                p.copy_(torch.randn(p.shape, generator=g, device=dev, dtype=torch.float32) * std)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    n_params = sum(v.numel() for v in sd.values())
    del module
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    path = folder / "wan_bench.safetensors"
    save_file(sd, str(path), metadata={"sencache_bench": json.dumps({"seed": seed, **model_kw})})
    del sd
    return path, n_params


# ---- instrumentation ---------------------------------------------------------------------------------------
class Probe:
    """Per-run counters and timers, shared by closures (ModelPatcher.clone deep-copies model_options; plain
    functions survive that as themselves, bound methods would drag a copy of the probe along).

    Timers never synchronise: on CUDA they are events recorded on the stream and read after the run, so they
    measure the GPU timeline — a cache's own kernels plus any idle gap its host-side work (and its own syncs)
    leave — and add nothing to wall time; on the CPU, where execution is synchronous, perf_counter."""

    def __init__(self, dev: torch.device):
        self.dev = dev
        self.evals: list[dict] = []     # per evaluation: calls, model calls, outer and inner intervals

    def reset(self):
        self.evals = []

    def mark(self):
        if self.dev.type == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def seconds(self, a, b) -> float:
        return a.elapsed_time(b) / 1e3 if self.dev.type == "cuda" else b - a

    def summary(self) -> dict:
        """Call after the run has finished (and the device is synchronised)."""
        per = []
        for e in self.evals:
            outer = sum(self.seconds(a, b) for a, b in e["outer"])
            inner = sum(self.seconds(a, b) for a, b in e["inner"])
            per.append((len(e["inner"]), outer, inner))
        comp = [p for p in per if p[0] > 0]
        reused = [p for p in per if p[0] == 0]
        return {"evaluations": len(per), "computed": len(comp), "model_calls": sum(p[0] for p in per),
                "model_s_per_eval": [p[2] for p in comp],
                "own_s_computed": [p[1] - p[2] for p in comp],     # wrapper chain minus the model call
                "own_s_reused": [p[1] for p in reused]}            # a reused evaluation costs only the wrapper


def instrument(model, probe: Probe):
    """A clone of `model` with the probe's wrappers: DIFFUSION_MODEL timer outermost and innermost around
    whatever cache wrapper is already attached; CALC_COND_BATCH numbers evaluations."""
    import comfy.patcher_extension as pe
    m = model.clone()

    def calc_cond_batch(executor, *args, **kwargs):
        probe.evals.append({"outer": [], "inner": []})
        return executor(*args, **kwargs)

    def outer(executor, *args, **kwargs):
        t0 = probe.mark()
        out = executor(*args, **kwargs)
        if not probe.evals:
            probe.evals.append({"outer": [], "inner": []})
        probe.evals[-1]["outer"].append((t0, probe.mark()))
        return out

    def inner(executor, *args, **kwargs):
        t0 = probe.mark()
        out = executor(*args, **kwargs)
        probe.evals[-1]["inner"].append((t0, probe.mark()))
        return out

    m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "bench_probe", calc_cond_batch)
    # ModelPatcher.wrappers: {type: {key: [fn]}}; keys run in insertion order, first = outermost.
    existing = m.wrappers.get(pe.WrappersMP.DIFFUSION_MODEL, {})
    ordered = {"bench_outer": [outer]}
    ordered.update(existing)
    ordered["bench_inner"] = [inner]
    m.wrappers[pe.WrappersMP.DIFFUSION_MODEL] = ordered
    return m


def make_recorder(model, rec: list, channels: int):
    """Records, per evaluation of an (uncached) run, what both caches' rules look at: σ, the first chunk's
    noisy latent (full, for SenCache's RMS) and EasyCache's subsampled input/output and output norm."""
    import comfy.patcher_extension as pe
    m = model.clone()
    seen = {"n": -1}
    counter = {"n": 0}

    def calc_cond_batch(executor, *args, **kwargs):
        counter["n"] += 1
        return executor(*args, **kwargs)

    def diffusion(executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        if seen["n"] == counter["n"]:          # only the first call of each evaluation
            return out
        seen["n"] = counter["n"]
        to = kwargs.get("transformer_options")
        if not isinstance(to, dict):
            to = next(a for a in reversed(args) if isinstance(a, dict))
        x = args[0][:, :channels]
        per = x.shape[0] // len(to.get("uuids") or [None])
        rec.append({"sigma": float(to["sigmas"].flatten()[0]),
                    "x": x[:per].detach().clone(),
                    "x_sub": x[:per, ..., ::8, ::8].detach().clone(),
                    "out_sub": out[:per, ..., ::8, ::8].detach().clone(),
                    "out_norm": out.flatten().abs().mean().detach().clone()})
        return out

    m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "bench_record", calc_cond_batch)
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "bench_record", diffusion)
    return m


# ---- offline predictors (on the uncached trajectory; only to choose parameters, never reported) -----------
def distance_table(rec: list, rms_diff) -> list[list[float]]:
    """dist[i][j] = ‖x_i − x_j‖_rms (j < i) between recorded latents, with the pack's own norm; computed once
    on the device, after which the full latents are dropped (only EasyCache's 1/64 subsamples stay, on CPU)."""
    dist = [[rms_diff(r["x"], rec[j]["x"]) for j in range(i)] for i, r in enumerate(rec)]
    for r in rec:
        del r["x"]
        for k in ("x_sub", "out_sub", "out_norm"):
            r[k] = r[k].to("cpu")
    return dist


def simulate_sencache(rec: list, dist: list, policy, state) -> int:
    """The pack's own ReusePolicy replayed on the recorded trajectory (fed as nodes/runtime.py feeds it)."""
    ref = None
    computed = 0
    for i, r in enumerate(rec):
        dx = dist[i][ref] if ref is not None else None
        d = policy.decide(state, r["sigma"], dx, i == len(rec) - 1, ref is not None)
        policy.commit(state, r["sigma"], d)
        if not d.reuse:
            ref = i
            computed += 1
    return computed


def simulate_easycache(rec: list, tau: float, start_t: float, end_t: float) -> int:
    """ComfyUI 0.3.75 easycache_forward_wrapper's rule, replayed on recorded tensors."""
    computed, x_prev, out_prev, norm_prev, k, cum = 0, None, None, None, None, 0.0
    for r in rec:
        if not r["sigma"] > end_t or not r["sigma"] <= start_t:
            computed += 1
            continue
        input_change = None
        if x_prev is not None:
            input_change = (r["x_sub"] - x_prev).flatten().abs().mean()
        if norm_prev is not None and k is not None:
            cum += float(k * input_change / norm_prev)
            if cum < tau:
                continue
            cum = 0.0
        computed += 1
        if norm_prev is not None:
            out_change = (r["out_sub"] - out_prev).flatten().abs().mean()
            if input_change is not None:
                k = out_change / input_change
        x_prev, out_prev, norm_prev = r["x_sub"], r["out_sub"], r["out_norm"]
    return computed


def predict_param(count_fn, target: int, lo: float = 1e-9, hi: float = 1e4, iters: int = 60) -> tuple[float, int]:
    """A parameter p (count non-increasing in p) whose predicted count is `target`: the geometric middle of
    the interval of p that predicts exactly `target`, else the p whose count is closest."""
    def first_at_most(n):            # smallest p with count(p) ≤ n (log bisection)
        a, b = math.log(lo), math.log(hi)
        if count_fn(hi) > n:
            return None
        for _ in range(iters):
            mid = (a + b) / 2
            if count_fn(math.exp(mid)) <= n:
                b = mid
            else:
                a = mid
        return math.exp(b)
    p_in = first_at_most(target)
    if p_in is None:
        return hi, count_fn(hi)
    p_out = first_at_most(target - 1)
    p = math.sqrt(p_in * p_out) if p_out is not None else p_in * 2.0
    return p, count_fn(p)


# ---- main benchmark ----------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.size = SIZES[args.size]
        self.limit = args.time_limit if args.time_limit is not None else self.size["time_limit"]
        self.runs: list[dict] = []
        self.notes: list[str] = []
        self.t_uncached = None
        self.n_params = None
        self.setup_s = {}

    def elapsed(self) -> float:
        return time.perf_counter() - T_START

    def fits(self, cost: float, reserve: float = 5.0) -> bool:
        return self.elapsed() + cost + reserve <= self.limit

    def est_cost(self, computed: int) -> float:
        t = self.t_uncached or self.t_eval_est * STEPS
        return t * computed / STEPS + 0.5

    def sample(self, model, label: str, method: str, param, target: int | None, holder=None, kind: str = "timed"):
        import comfy.model_management
        import comfy.sample
        probe = self.probe
        probe.reset()
        m = instrument(model, probe)
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)   # no empty_cache: every run starts with a warm allocator
        latent = comfy.sample.fix_empty_latent_channels(m, self.latent)
        noise = comfy.sample.prepare_noise(latent, SEED)
        # every run samples a fresh clone (new wrappers); ComfyUI swaps the loaded clone for it (weights stay on
        # the device). Done here, outside the timed region, as a re-run of an unchanged workflow would find it.
        t0 = time.perf_counter()
        comfy.model_management.load_models_gpu([m])
        sync(self.dev)
        preload = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = comfy.sample.sample(m, noise, STEPS, CFG, SAMPLER, SCHEDULER, self.pos, self.neg, latent,
                                  disable_pbar=True, seed=SEED)
        sync(self.dev)
        wall = time.perf_counter() - t0
        s = probe.summary()
        r = {"label": label, "method": method, "param": param, "target": target, "kind": kind, "wall_s": wall,
             "preload_s": preload,
             "computed": s["computed"], "evaluations": s["evaluations"], "model_calls": s["model_calls"],
             "model_s_per_eval_median": statistics.median(s["model_s_per_eval"]) if s["model_s_per_eval"] else None,
             "model_s_total": sum(s["model_s_per_eval"]),
             "own_s_computed": s["own_s_computed"], "own_s_reused": s["own_s_reused"],
             "finite": bool(torch.isfinite(out).all())}
        if self.dev.type == "cuda":
            r["peak_alloc_bytes"] = torch.cuda.max_memory_allocated(self.dev)
            r["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(self.dev)
        if holder is not None and holder.last_trace is not None:
            tr = holder.last_trace
            r["trace"] = {"computed": tr.computed, "reused": tr.reused, "total": len(tr.steps),
                          "wall_seconds": tr.wall_seconds, "model_seconds": tr.model_seconds}
        self.runs.append(r)
        log(f"{label}: {r['computed']}/{r['evaluations']} evaluations computed, wall {wall:.3f} s"
            + (f", peak {r['peak_alloc_bytes'] / 2**30:.2f} GiB" if "peak_alloc_bytes" in r else ""))
        return r

    # -- the pieces ---------------------------------------------------------------------------------------
    def setup(self):
        a = self.args
        want_cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
        if a.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
        from devkit import host
        self.base = pathlib.Path(tempfile.mkdtemp(prefix="sencache_bench_", dir=a.tmpdir))
        try:
            host.boot(self.base, cpu=not want_cuda)
        except TypeError:            # an older devkit.host without the cpu switch: CPU only
            if want_cuda:
                raise SystemExit("devkit.host.boot() has no cpu=False switch: cannot boot ComfyUI on the GPU")
            host.boot(self.base)
        import comfy.model_management as mm
        import comfy.sd
        from comfy_extras.nodes_model_advanced import ModelSamplingSD3
        self.dev = mm.get_torch_device()
        if self.dev.type == "cpu" and a.cpu_threads:
            torch.set_num_threads(a.cpu_threads)   # shared CPUs: fewer threads, far less contention
        self.dtype = {"auto": torch.bfloat16 if self.dev.type == "cuda" else torch.float32, "bf16": torch.bfloat16,
                      "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
        import importlib
        pack = host.pack_module()
        self.sc_apply = importlib.import_module(f"{pack.__name__}.nodes.apply")
        self.sc_runtime = importlib.import_module(f"{pack.__name__}.nodes.runtime")
        self.sc_calibrate = importlib.import_module(f"{pack.__name__}.nodes.calibrate")
        self.sc_core = importlib.import_module(f"{pack.__name__}.sencache_core")
        self.device_name = device_name(self.dev)
        log(f"device {self.device_name} ({self.dev}), dtype {self.dtype}, torch {torch.__version__}, "
            f"ComfyUI {comfyui_version()}, size {a.size}, time limit {self.limit:.0f} s")

        # a priori: matmul FLOPs at ~450 TFLOP/s achieved (H100/H200 bf16 with SDPA flash attention; the
        # 8192³ bf16 matmul peak there is ~800); CPU: a rough 0.2 TFLOP/s. Replaced by measurement after calibration.
        self.flops = flops_per_eval(self.size["model"], self.size["latent"], self.size["text_tokens"])
        rate = 450e12 if self.dev.type == "cuda" else 0.2e12
        self.t_eval_est = max(self.flops / rate, 0.01)
        log(f"one evaluation ≈ {self.flops / 1e12:.1f} TFLOP; a-priori estimate {self.t_eval_est:.2f} s per "
            f"evaluation, {self.plan_estimate():.0f} s in all (limit {self.limit:.0f} s)")
        if not self.fits(1.5 * STEPS * self.t_eval_est + self.minimal_plan()):
            return False
        t0 = time.perf_counter()
        ckpt, self.n_params = build_checkpoint(self.base, self.size["model"], self.dev, self.dtype)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = comfy.sd.load_diffusion_model(str(ckpt), model_options={"dtype": self.dtype})
        self.model = ModelSamplingSD3().patch(model, SHIFT)[0]
        t_load = time.perf_counter() - t0
        self.ckpt_bytes = ckpt.stat().st_size
        ckpt.unlink()        # loaded into memory; the file is no longer needed
        self.setup_s = {"build_and_save": t_build, "load": t_load}
        log(f"model: {self.n_params / 1e9:.3f} B parameters, checkpoint {self.ckpt_bytes / 2**30:.2f} GiB, "
            f"built+saved {t_build:.1f} s, loaded {t_load:.1f} s ({type(self.model.model).__name__})")

        c, f, h, w = self.size["latent"]
        self.latent = torch.zeros(1, c, f, h, w)
        g = torch.Generator().manual_seed(1)
        tok = self.size["text_tokens"]
        self.pos = [[torch.randn(1, tok, 4096, generator=g), {}]]
        self.neg = [[torch.randn(1, tok, 4096, generator=g), {}]]
        self.probe = Probe(self.dev)
        return True

    def plan_estimate(self, t_eval: float | None = None) -> float:
        """Elapsed so far + calibration (1.5 evaluations per step) + the minimal plan + repeats, with two real
        runs per searched budget."""
        te = t_eval or self.t_eval_est
        run = te * STEPS
        todo = 0.0 if self.t_uncached else 1.5 * run          # calibration
        minimal = run * (1 + 1) + sum(2 * run / b for b in BUDGETS) * 2
        repeats = (self.size["repeats"] - 1) * (2 * run + sum(run / b for b in BUDGETS) * 2)
        return self.elapsed() + todo + minimal + repeats

    def calibrate(self):
        rec: list = []
        m = make_recorder(self.model, rec, 16)
        t0 = time.perf_counter()
        _, self.profile = self.sc_calibrate.calibrate(m, self.pos, self.neg, {"samples": self.latent}, SEED, STEPS,
                                                      CFG, SAMPLER, SCHEDULER, runs=1)
        sync(self.dev)
        self.t_calibration = time.perf_counter() - t0
        self.rec = rec
        self.dist = distance_table(rec, self.sc_core.rms_diff)
        self.t_eval_est = self.t_calibration / (STEPS * 1.5)
        log(f"calibration (1 run, {STEPS} steps, doubles as warm-up): {self.t_calibration:.2f} s; "
            f"{len(rec)} evaluations recorded; estimated total {self.plan_estimate():.0f} s (limit {self.limit:.0f} s)")

    def sencache_settings(self, eps: float):
        a = self.args
        return self.sc_runtime.SenCacheSettings(eps_start=eps * a.eps_start_ratio, eps_main=eps,
                                                max_consecutive=a.max_consecutive)

    def sencache_model(self, eps: float):
        return self.sc_apply.apply_sencache(self.model, self.profile, self.sencache_settings(eps))

    def easycache_model(self, tau: float):
        from comfy_extras.nodes_easycache import EasyCacheNode
        out = EasyCacheNode.execute(self.model, tau, self.args.easycache_start, self.args.easycache_end, False)
        return out.result[0] if hasattr(out, "result") else out[0]

    def search(self, method: str, target: int):
        """Predict the parameter offline, then correct it with real (timed) runs until within ±1."""
        ms = self.model.get_model_object("model_sampling")
        if method == "sencache":
            def count(eps):
                holder = self.sc_runtime.SenCacheHolder(self.profile, self.sencache_settings(eps), 16)
                sigmas = [r["sigma"] for r in self.rec] + [0.0]
                policy = self.sc_core.plan_run(holder.plan_settings(ms), self.profile, sigmas).guided
                return simulate_sencache(self.rec, self.dist, policy, self.sc_core.PolicyState())
        else:
            start_t = float(ms.percent_to_sigma(self.args.easycache_start))
            end_t = float(ms.percent_to_sigma(self.args.easycache_end))

            def count(tau):
                return simulate_easycache(self.rec, tau, start_t, end_t)
        p, predicted = predict_param(count, target)
        log(f"{method} {STEPS}->{target}: predicted parameter {p:.6g} (offline count {predicted})")
        lo, hi = 0.0, math.inf           # real counts: count(lo) > target + 1, count(hi) < target - 1
        tried = []
        best = None
        for i in range(self.size["max_search_runs"]):
            if not self.fits(self.est_cost(target)):
                self.notes.append(f"{method} {STEPS}->{target}: search stopped by the time limit after {i} runs")
                break
            model, holder = self.sencache_model(p) if method == "sencache" else (self.easycache_model(p), None)
            r = self.sample(model, f"{method} {STEPS}->{target} (p={p:.4g})", method, p, target, holder,
                            kind="search")
            tried.append((p, r["computed"]))
            if best is None or abs(r["computed"] - target) < abs(best["computed"] - target):
                best = r
            if abs(r["computed"] - target) <= 1:
                r["kind"] = "timed"
                break
            if r["computed"] > target:
                lo = max(lo, p)
            else:
                hi = min(hi, p)
            if lo > 0 and hi < math.inf:
                p = math.sqrt(lo * hi)
                continue
            # one side only: the offline replay missed by (n − target) (the real trajectory drifts once steps are
            # reused); ask it for the count that cancels that bias, else step by 3× in the right direction
            n = r["computed"]
            q, _ = predict_param(count, min(max(2 * target - n, 1), STEPS))
            p = q if (n > target and q > p) or (n < target and q < p) else (p * 3.0 if n > target else p / 3.0)
        if best is not None and abs(best["computed"] - target) > 1:
            self.notes.append(f"{method} {STEPS}->{target}: no parameter within ±1 found (tried {tried}); "
                              f"closest realised count {best['computed']}")
            best["kind"] = "timed"
        return best

    def repeat(self, r: dict):
        if r is None:
            return
        if not self.fits(self.est_cost(r["computed"])):
            self.notes.append(f"repeat of '{r['label']}' skipped: time limit")
            return
        if r["method"] == "sencache":
            model, holder = self.sencache_model(r["param"])
        elif r["method"] == "easycache":
            model, holder = self.easycache_model(r["param"]), None
        else:
            model, holder = self.model, None
        rr = self.sample(model, r["label"], r["method"], r["param"], r["target"], holder)
        if rr["computed"] != r["computed"]:
            self.notes.append(f"'{r['label']}': repeat computed {rr['computed']} vs {r['computed']} (nondeterministic)")

    def minimal_plan(self) -> float:
        """Seconds for uncached, ε=0, and one run per budget and method."""
        run_cost = self.t_eval_est * STEPS
        return run_cost * 2 + sum(run_cost / b for b in BUDGETS) * 2

    def abort(self, what: str, need: float) -> bool:
        msg = (f"cannot fit: {what} needs ~{need:.0f} s (+5 s reserve) after {self.elapsed():.0f} s, over the time "
               f"limit of {self.limit:.0f} s; aborting (partial results written)")
        log(msg)
        self.notes.append(msg)
        return False

    def run(self):
        if not self.setup():               # a-priori estimate (e.g. the full size on a CPU)
            return self.abort("the calibration and the minimal plan (a-priori estimate)",
                              1.5 * STEPS * self.t_eval_est + self.minimal_plan())
        self.calibrate()
        if not self.fits(self.minimal_plan()):  # measured
            return self.abort("the minimal plan (uncached, ε=0, one run per budget and method)", self.minimal_plan())
        first = {}
        first["uncached"] = self.sample(self.model, "uncached", "uncached", None, STEPS)
        self.t_uncached = first["uncached"]["wall_s"]
        log(f"estimated total: {self.plan_estimate(self.t_uncached / STEPS):.0f} s (limit {self.limit:.0f} s)")
        for b in BUDGETS:
            first[f"sencache{b}"] = self.search("sencache", STEPS // b)
        for b in BUDGETS:
            first[f"easycache{b}"] = self.search("easycache", STEPS // b)
        if self.fits(self.est_cost(STEPS)):
            m0, h0 = self.sencache_model(0.0)
            first["eps0"] = self.sample(m0, "sencache eps=0", "sencache_eps0", 0.0, STEPS, h0)
        else:
            self.notes.append("SenCache ε=0 run skipped: time limit")
        for _ in range(self.size["repeats"] - 1):      # second round, same order (drift hits all alike)
            for key in ("uncached", *(f"sencache{b}" for b in BUDGETS), *(f"easycache{b}" for b in BUDGETS), "eps0"):
                if key in first:
                    if key == "eps0":
                        if not self.fits(self.est_cost(STEPS)):
                            self.notes.append("repeat of SenCache ε=0 skipped: time limit")
                            continue
                        m0, h0 = self.sencache_model(0.0)
                        self.sample(m0, "sencache eps=0", "sencache_eps0", 0.0, STEPS, h0)
                    else:
                        self.repeat(first[key])
        return True

    # -- report -------------------------------------------------------------------------------------------
    def summarise(self) -> dict:
        timed = [r for r in self.runs if r["kind"] == "timed"]
        groups: dict = {}
        for r in timed:
            groups.setdefault((r["method"], r["target"], r["param"]), []).append(r)
        base = [r for r in timed if r["method"] == "uncached"]
        t_base = statistics.median(r["wall_s"] for r in base) if base else None
        floor = [x for r in base for x in r["own_s_computed"]]
        floor_s = statistics.median(floor) if floor else 0.0     # instrumentation's own per-evaluation cost
        model_eval = [x for r in base for x in ([r["model_s_per_eval_median"]] if r["model_s_per_eval_median"] else [])]
        t_model = statistics.median(model_eval) if model_eval else None
        peak_base = statistics.median(r["peak_alloc_bytes"] for r in base) if base and "peak_alloc_bytes" in base[0] else None
        rows = []
        order = {"uncached": 0, "sencache": 1, "easycache": 2, "sencache_eps0": 3}
        for (method, target, param), rs in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], -(kv[0][1] or 0))):
            walls = [r["wall_s"] for r in rs]
            computed = rs[0]["computed"]
            total = rs[0]["evaluations"]
            own_c = [x - floor_s for r in rs for x in r["own_s_computed"]]
            own_r = [x - floor_s for r in rs for x in r["own_s_reused"]]
            own_all = own_c + own_r
            wall = statistics.median(walls)
            row = {"method": method, "param": param, "target": target, "computed": computed, "total": total,
                   "eval_ratio": total / computed if computed else None, "repeats": len(rs),
                   "wall_median_s": wall, "wall_min_s": min(walls), "wall_max_s": max(walls),
                   "speedup": (t_base / wall) if t_base else None,
                   "own_ms_per_eval": 1e3 * statistics.median(own_all) if own_all else None,
                   "own_ms_computed": 1e3 * statistics.median(own_c) if own_c else None,
                   "own_ms_reused": 1e3 * statistics.median(own_r) if own_r else None,
                   "own_pct_of_model_eval": (100 * statistics.median(own_all) / t_model) if own_all and t_model else None,
                   "model_s_per_eval_median": statistics.median([r["model_s_per_eval_median"] for r in rs
                                                                 if r["model_s_per_eval_median"]] or [float("nan")]),
                   "finite": all(r["finite"] for r in rs)}
            if row["speedup"] and row["eval_ratio"]:
                row["speedup_over_eval_ratio"] = row["speedup"] / row["eval_ratio"]
            if "peak_alloc_bytes" in rs[0]:
                row["peak_alloc_GiB"] = max(r["peak_alloc_bytes"] for r in rs) / 2**30
                row["peak_delta_MiB"] = (max(r["peak_alloc_bytes"] for r in rs) - peak_base) / 2**20 if peak_base else None
            rows.append(row)
        eps0 = [r for r in timed if r["method"] == "sencache_eps0"]
        overhead = {"instrumentation_floor_ms": 1e3 * floor_s, "model_eval_s": t_model,
                    "tflop_per_eval": self.flops / 1e12,
                    "achieved_tflops": self.flops / t_model / 1e12 if t_model else None}
        if eps0:
            own = [x - floor_s for r in eps0 for x in r["own_s_computed"]]
            overhead["direct_ms_per_eval_median"] = 1e3 * statistics.median(own)
            overhead["direct_ms_per_eval_p90"] = 1e3 * sorted(own)[int(0.9 * (len(own) - 1))]
            overhead["direct_pct_of_model_eval"] = 100 * statistics.median(own) / t_model if t_model else None
            if base:
                diffs = [(e["wall_s"] - b["wall_s"]) / STEPS for e, b in zip(eps0, base)]
                overhead["wall_diff_ms_per_eval"] = [1e3 * d for d in diffs]
                overhead["wall_diff_ms_per_eval_median"] = 1e3 * statistics.median(diffs)
                overhead["wall_diff_pct_of_model_eval"] = 100 * statistics.median(diffs) / t_model if t_model else None
        return {"rows": rows, "overhead": overhead, "uncached_wall_median_s": t_base}

    def write(self, ok: bool):
        a = self.args
        out_dir = pathlib.Path(a.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = f"{slug(self.device_name)}-{a.size}"
        summ = self.summarise() if self.runs else {"rows": [], "overhead": {}}
        c, f, h, w = self.size["latent"]
        cfg = {"size": a.size, "model": {**self.size["model"], "in_dim": 16, "out_dim": 16, "text_dim": 4096,
                                         "freq_dim": 256, "parameters": self.n_params},
               "latent": [c, f, h, w], "text_tokens": self.size["text_tokens"], "steps": STEPS, "cfg": CFG,
               "sampler": SAMPLER, "scheduler": SCHEDULER, "shift": SHIFT, "seed": SEED, "dtype": str(self.dtype),
               "sencache": {"eps_start_ratio": a.eps_start_ratio, "max_consecutive": a.max_consecutive,
                            "calibration": "1 run, same schedule/size/seed"},
               "easycache": {"start_percent": a.easycache_start, "end_percent": a.easycache_end}}
        doc = {"device": self.device_name, "device_type": self.dev.type, "torch": torch.__version__,
               "cuda": torch.version.cuda, "comfyui": comfyui_version(), "python": platform.python_version(),
               "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "complete": ok,
               "total_seconds": self.elapsed(), "time_limit_s": self.limit, "setup_seconds": self.setup_s,
               "calibration_seconds": getattr(self, "t_calibration", None), "config": cfg, "notes": self.notes,
               **summ, "runs": self.runs}
        (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=1, default=float))
        (out_dir / f"{name}.md").write_text(render_md(doc))
        log(f"wrote {out_dir / name}.md and .json ({'complete' if ok else 'INCOMPLETE'}; {self.elapsed():.0f} s)")
        return out_dir / f"{name}.md"


def _f(v, fmt="{:.3f}", none="–"):
    return none if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def render_md(d: dict) -> str:
    c = d["config"]
    m = c["model"]
    lines = [f"# SenCache speed benchmark: {d['device']} ({c['size']} size)", "",
             f"- Device: **{d['device']}** ({d['device_type']}); torch {d['torch']} (CUDA {d['cuda']}), "
             f"ComfyUI {d['comfyui']}, Python {d['python']}; {d['date_utc']} UTC; total {d['total_seconds']:.0f} s"
             f"{'' if d['complete'] else ' — **INCOMPLETE** (see notes)'}.",
             f"- Model: random-weight WanModel (ComfyUI's class, loaded through comfy.sd.load_diffusion_model), "
             f"dim {m['dim']}, ffn {m['ffn_dim']}, {m['num_layers']} blocks, {m['num_heads']} heads, "
             f"{_f(m['parameters'] and m['parameters'] / 1e9, '{:.3f}', '?')} B parameters, {c['dtype']}.",
             f"- Sampling: latent {'×'.join(map(str, c['latent']))}, text [1, {c['text_tokens']}, 4096], "
             f"{c['steps']} steps {c['sampler']}/{c['scheduler']}, CFG {c['cfg']}, shift {c['shift']}, seed {c['seed']}; "
             "comfy.sample.sample (KSampler path).",
             f"- SenCache: ε_start = {c['sencache']['eps_start_ratio']}·ε_main, K = {c['sencache']['max_consecutive']}, "
             f"profile from the Calibrator ({c['sencache']['calibration']}); ε searched per budget. "
             f"EasyCache (core): start {c['easycache']['start_percent']}, end {c['easycache']['end_percent']}, "
             "reuse_threshold searched per budget.",
             "- Wall = whole sampling run, median over repeats; speed-up = uncached median / method median; "
             "evaluation ratio = evaluations / computed evaluations (counted by an innermost wrapper).",
             "- Own time = the cache wrapper's time per evaluation (outer − inner wrapper timers: CUDA events on the "
             "GPU timeline, no syncs added; perf_counter on CPU; instrumentation floor subtracted): decision, norms, "
             "cache copies, bookkeeping; for a reused evaluation it is its whole cost.",
             ""]
    hdr = ("| method | parameter | computed / total | eval ratio | wall median s (min–max, n) | wall speed-up | "
           "speed-up ÷ eval ratio | own ms/eval (computed · reused) | own % of a model eval |")
    sep = "|---|---|---|---|---|---|---|---|---|"
    gpu = any("peak_alloc_GiB" in r for r in d["rows"])
    if gpu:
        hdr += " peak GiB | Δ peak MiB |"
        sep += "---|---|"
    lines += [hdr, sep]
    names = {"uncached": "uncached", "sencache": "SenCache", "easycache": "EasyCache (core)",
             "sencache_eps0": "SenCache ε=0 (overhead)"}
    for r in d["rows"]:
        par = "–" if r["param"] is None else (f"ε={r['param']:.4g}" if "sencache" in r["method"] else f"τ={r['param']:.4g}")
        if r["method"] in ("sencache", "easycache"):
            par += f" (target {r['target']})"
        line = (f"| {names[r['method']]} | {par} | {r['computed']}/{r['total']} | {_f(r['eval_ratio'], '{:.2f}×')} | "
                f"{_f(r['wall_median_s'])} ({_f(r['wall_min_s'])}–{_f(r['wall_max_s'])}, {r['repeats']}) | "
                f"{_f(r['speedup'], '{:.2f}×')} | {_f(r.get('speedup_over_eval_ratio'), '{:.2f}')} | "
                f"{_f(r['own_ms_per_eval'], '{:.2f}')} ({_f(r['own_ms_computed'], '{:.2f}')} · {_f(r['own_ms_reused'], '{:.2f}')}) | "
                f"{_f(r['own_pct_of_model_eval'], '{:.3f}%')} |")
        if gpu:
            line += f" {_f(r.get('peak_alloc_GiB'), '{:.2f}')} | {_f(r.get('peak_delta_MiB'), '{:+.1f}')} |"
        lines.append(line)
    o = d.get("overhead", {})
    lines += ["", "## Overhead of SenCache's per-step decision and bookkeeping", ""]
    if o.get("model_eval_s"):
        lines.append(f"- One model evaluation (all CFG branches, uncached run, median): {o['model_eval_s'] * 1e3:.2f} ms "
                     f"({_f(o.get('tflop_per_eval'), '{:.3g}')} TFLOP of matmuls: "
                     f"{_f(o.get('achieved_tflops'), '{:.3g}')} TFLOP/s achieved).")
    if "direct_ms_per_eval_median" in o:
        lines.append(f"- Direct (ε=0 run, every step computed, wrapper time minus model call): median "
                     f"{o['direct_ms_per_eval_median']:.3f} ms per evaluation (p90 {o['direct_ms_per_eval_p90']:.3f} ms) = "
                     f"**{_f(o.get('direct_pct_of_model_eval'), '{:.3f}%')}** of one model evaluation (goal < 1 %); "
                     f"instrumentation floor subtracted: {o['instrumentation_floor_ms']:.3f} ms.")
    if "wall_diff_ms_per_eval_median" in o:
        per = ", ".join(f"{x:+.2f}" for x in o["wall_diff_ms_per_eval"])
        lines.append(f"- Indirect ((wall ε=0 − wall uncached) / {c['steps']}, paired repeats): median "
                     f"{o['wall_diff_ms_per_eval_median']:+.2f} ms per evaluation ({per}) = "
                     f"{_f(o.get('wall_diff_pct_of_model_eval'), '{:+.3f}%')} of one model evaluation "
                     "(includes run-to-run noise; can be negative).")
    s = d.get("setup_seconds") or {}
    lines += ["", f"Setup: build+save {_f(s.get('build_and_save'), '{:.1f}')} s, load {_f(s.get('load'), '{:.1f}')} s; "
              f"calibration run {_f(d.get('calibration_seconds'), '{:.1f}')} s (also the warm-up)."]
    if c["size"] == "reduced":
        lines += ["", "Reduced size: a tiny model, so a model evaluation takes milliseconds and the caches' fixed "
                  "per-evaluation cost looks large beside it; wall times on a shared CPU are noisy. Only the full size "
                  "on a GPU answers the real-scale questions."]
    if d["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in d["notes"]]
    lines += ["", "Search and repeat runs: see the .json file (`runs`).", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="weights/compute dtype; auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--out", default=str(REPO / "results" / "speed"))
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds for the whole script (default: full 460, reduced 240); runs that cannot fit are skipped")
    p.add_argument("--max-consecutive", type=int, default=4, help="SenCache K")
    p.add_argument("--eps-start-ratio", type=float, default=1.0, help="ε_start = ratio · ε_main")
    p.add_argument("--easycache-start", type=float, default=0.15)
    p.add_argument("--easycache-end", type=float, default=0.95)
    p.add_argument("--cpu-threads", type=int, default=1, help="torch threads on CPU (0 = torch's default)")
    p.add_argument("--tmpdir", default=None, help="where the temporary checkpoint goes (default: system temp)")
    a = p.parse_args(argv)
    if a.size == "full" and a.device == "cpu":
        log("warning: --size full on CPU will not fit any reasonable time limit")
    b = Bench(a)
    ok = False
    try:
        with torch.inference_mode():     # as ComfyUI's executor runs every node (execution.py)
            ok = b.run()
    finally:
        if hasattr(b, "dev"):
            b.write(ok)
        if hasattr(b, "base"):
            shutil.rmtree(b.base, ignore_errors=True)
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
