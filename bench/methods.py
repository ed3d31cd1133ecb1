"""The methods the quality benchmark compares, each as something applied to a ComfyUI MODEL (ModelPatcher).

- SenCache: through this pack's own node code (nodes.apply.apply_sencache), both reuse modes.
- EasyCache / LazyCache: ComfyUI core's own nodes (comfy_extras.nodes_easycache), called as a workflow would.
  EasyCache adds its cached difference into the model input *in place*; "input copied" puts an outer
  DIFFUSION_MODEL wrapper in front that hands EasyCache a clone of x (what fp16/bf16 users get from the cast).
- TeaCache-style and MagCache-style: re-implemented here (bench only, never in the pack) as keyed DIFFUSION_MODEL
  wrappers with the authors' decision rules, calibrated on this model (see calibrate_teacache / calibrate_magcache).
- Fixed interval: computes a fixed, evenly spaced set of steps (first and last always), reuses the output between;
  "+ extrapolation" extrapolates the reused output in σ from the last two computed steps, as the pack's
  output_extrapolated mode does (only in runs without an unconditional pass, i.e. CFG 1; with CFG it is plain reuse).
- Planned schedule: B real steps on the σ schedule the pack's SenCache Schedule plans from the profile
  (sencache_core.schedule), anchored at the reference schedule's first and last non-zero σ.

Every wrapper here makes its decision once per sampler evaluation (identified by σ) and caches per call signature,
so cond and uncond follow one decision whether they arrive batched or separately.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

import comfy.patcher_extension as pe

from sencache_core.budget import k_for_budget, k_for_target, min_evaluations  # noqa: F401  (pure; shared with the pack)
from sencache_core.reuse import extrapolate

DM = pe.WrappersMP.DIFFUSION_MODEL


@functools.cache
def _find_transformer_options():
    from bench.common import pack_namespace
    return pack_namespace().runtime.find_transformer_options


def _to(args, kwargs) -> dict:
    """The wrapped call's transformer_options, found the way the pack's own wrappers find them."""
    return _find_transformer_options()(args, kwargs) or {}


def _step_index(to: dict) -> tuple[int, int]:
    """(index of the current σ in the schedule, number of steps)."""
    sig = float(to["sigmas"].flatten()[0])
    ss = to["sample_sigmas"].flatten().tolist()
    i = int(np.argmin([abs(s - sig) for s in ss[:-1]]))
    return i, len(ss) - 1


def _rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12))


class _StepCache:
    """Per-run state shared by the bench wrappers: one decision per σ; cached outputs per call signature."""

    def __init__(self, mode: str = "output"):
        self.sigma = None
        self.reuse = False
        self.cache: dict = {}
        self.cache_sigma: dict = {}   # key -> σ of the cached output
        self.previous: dict = {}  # output_extrapolated: key -> (σ, output) of the computed evaluation before the cache
        # "output": reuse f; "output_minus_input": reuse f − x, add the current x back; "output_extrapolated": f
        # extrapolated in σ from the last two computed evaluations in calls without an uncond pass, else f
        self.mode = mode

    def key(self, to, x):
        return (tuple(str(u) for u in (to.get("uuids") or [])), tuple(x.shape))

    def run(self, executor, args, kwargs, decide):
        to = _to(args, kwargs)
        x = args[0]
        sig = float(to["sigmas"].flatten()[0])
        if sig != self.sigma:
            self.sigma = sig
            self.reuse = decide(to, args)
        k = self.key(to, x)
        if self.reuse and k in self.cache:
            c = self.cache[k]
            if self.mode == "output_minus_input":
                return c + x[:, :c.shape[1]]
            if self.mode == "output_extrapolated" and k in self.previous and 1 not in (to.get("cond_or_uncond") or [0]):
                (s_prev, f_prev), s_ref = self.previous[k], self.cache_sigma[k]
                return extrapolate(f_prev, s_prev, c, s_ref, sig)
            return c.clone()
        out = executor(*args, **kwargs)
        c = out.detach()
        if self.mode == "output_extrapolated" and k in self.cache:
            self.previous[k] = (self.cache_sigma[k], self.cache[k])
        self.cache_sigma[k] = sig
        self.cache[k] = c - x[:, :c.shape[1]] if self.mode == "output_minus_input" else c.clone()
        return out


# ---- fixed interval --------------------------------------------------------------------------------------------
def computed_steps(n: int, budget: int) -> set[int]:
    """Evenly spaced step indices, first (0) and last (n-1) included, exactly `budget` of them."""
    budget = max(1, min(n, budget))
    if budget == 1:
        return {0}
    idx = sorted({int(round(v)) for v in np.linspace(0, n - 1, budget)})
    assert len(idx) == budget, (n, budget, idx)
    return set(idx)


def planned_sigmas(profile, budget: int, reference_sigmas, spacing: str | None = None) -> list[float]:
    """The pack's planned schedule (sencache_core.schedule) for `budget` real steps anchored at the reference
    schedule: spacing None = "scheduler × profile"; "calibrated" = the candidate the Calibrator's tune_schedule found
    best for the nearest tuned fraction (as the SenCache Schedule node's auto / calibrated spacing picks it)."""
    from sencache_core import schedule
    if spacing == schedule.CALIBRATED:
        name = schedule.calibrated_candidate(profile, budget, len(reference_sigmas) - 1)
        if name is None:
            raise ValueError("the profile has no schedule tuning for this budget")
        return schedule.schedule_for(profile, name, budget, reference_sigmas)
    return schedule.plan_from_base(profile, budget, reference_sigmas, spacing or schedule.SCHEDULER_X_PROFILE)


def every_kth_steps(n: int, budget: int) -> set[int] | None:
    """Steps 0, k, 2k, ... (k = n / budget; the last step is NOT forced): with euler and output reuse this is
    exactly euler with `budget` steps of the same schedule. None when n is not a multiple of budget."""
    if n % budget:
        return None
    return set(range(0, n, n // budget))


def apply_fixed(model, budget: int, mode: str = "output", every_kth: bool = False, computed: set | None = None):
    """Computes a fixed set of step indices (evenly spaced, every k-th, or `computed` as given) and reuses between."""
    m = model.clone()
    state = _StepCache(mode)
    wanted = {} if computed is None else {"set": set(computed)}

    def decide(to, args):
        i, n = _step_index(to)
        if "set" not in wanted:
            wanted["set"] = every_kth_steps(n, budget) if every_kth else computed_steps(n, budget)
        return i not in wanted["set"]

    m.add_wrapper_with_key(DM, "bench_fixed", lambda ex, *a, **k: state.run(ex, a, k, decide))
    return m


# ---- TeaCache-style ------------------------------------------------------------------------------------------
def modulated_input(dm, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep-modulated input e0 (what TeaCache4Wan2.1 compares with use_ret_steps): the model's own
    time_embedding + time_projection of the timestep argument."""
    from comfy.ldm.wan.model import sinusoidal_embedding_1d
    with torch.no_grad():
        e = dm.time_embedding(sinusoidal_embedding_1d(dm.freq_dim, t.flatten()).to(dtype=torch.float32))
        return dm.time_projection(e)


def apply_teacache(model, coefficients, threshold: float, ret_fraction: float = 0.1):
    """TeaCache rule: accumulate poly(rel-L1 change of e0) since the last computed step; reuse while the sum stays
    below `threshold`; the first ret_fraction of steps (TeaCache's ret_steps, 5 of 50 for Wan) and the last step
    are always computed."""
    m = model.clone()
    dm = model.model.diffusion_model
    poly = np.poly1d(coefficients)
    st = {"acc": 0.0, "prev": None}
    state = _StepCache()

    def decide(to, args):
        i, n = _step_index(to)
        e0 = modulated_input(dm, args[1][:1])
        prev, st["prev"] = st["prev"], e0
        if i < max(1, int(round(ret_fraction * n))) or i == n - 1 or prev is None:
            st["acc"] = 0.0
            return False
        st["acc"] += float(poly(_rel_l1(e0, prev)))
        if st["acc"] < threshold:
            return True
        st["acc"] = 0.0
        return False

    m.add_wrapper_with_key(DM, "bench_teacache", lambda ex, *a, **k: state.run(ex, a, k, decide))
    return m


# ---- MagCache-style ------------------------------------------------------------------------------------------
def apply_magcache(model, mag_ratios, threshold: float, K: int, retention: float = 0.1):
    """MagCache rule (per step k ≥ retention·n): acc_ratio *= ratio[k]; acc_err += |1 − acc_ratio|; reuse while
    acc_err < threshold and at most K steps in a row; otherwise compute and reset."""
    m = model.clone()
    st = {"ratio": 1.0, "err": 0.0, "steps": 0}
    state = _StepCache()

    def decide(to, args):
        i, n = _step_index(to)
        if i < int(round(retention * n)) or i >= len(mag_ratios):
            st.update(ratio=1.0, err=0.0, steps=0)
            return False
        st["ratio"] *= float(mag_ratios[i])
        st["steps"] += 1
        st["err"] += abs(1.0 - st["ratio"])
        if st["err"] < threshold and st["steps"] <= K:
            return True
        st.update(ratio=1.0, err=0.0, steps=0)
        return False

    m.add_wrapper_with_key(DM, "bench_magcache", lambda ex, *a, **k: state.run(ex, a, k, decide))
    return m


# ---- calibration recorders for TeaCache / MagCache -------------------------------------------------------------
class Recorder:
    """Records, per step of uncached runs, e0 and the cond-branch model output (TeaCache/MagCache calibration)."""

    def __init__(self, model):
        self.dm = model.model.diffusion_model
        self.runs: list[list[tuple]] = []

    def attach(self, model):
        m = model.clone()
        self.runs.append([])

        def wrapper(ex, *a, **k):
            to = _to(a, k)
            out = ex(*a, **k)
            cou = list(to.get("cond_or_uncond") or [0])
            per = out.shape[0] // len(cou)
            i = cou.index(0) if 0 in cou else 0
            self.runs[-1].append((float(to["sigmas"].flatten()[0]), modulated_input(self.dm, a[1][:1]),
                                  out[i * per:(i + 1) * per].detach().clone()))
            return out

        m.add_wrapper_with_key(DM, "bench_recorder", wrapper)
        return m

    def teacache_coefficients(self, degree: int = 4) -> np.ndarray:
        """TeaCache's calibration: fit rel-L1 change of the output against rel-L1 change of e0, consecutive steps."""
        xs, ys = [], []
        for run in self.runs:
            for (_, e_prev, o_prev), (_, e, o) in zip(run[:-1], run[1:]):
                xs.append(_rel_l1(e, e_prev))
                ys.append(_rel_l1(o, o_prev))
        return np.polyfit(np.asarray(xs), np.asarray(ys), degree)

    def mag_ratios(self) -> np.ndarray:
        """MagCache's calibration: per step k, mean over runs of ‖out_k‖ / ‖out_{k−1}‖ (ratio[0] = 1)."""
        n = min(len(r) for r in self.runs)
        ratios = np.ones(n)
        for k in range(1, n):
            ratios[k] = np.mean([float(r[k][2].norm() / r[k - 1][2].norm().clamp_min(1e-12)) for r in self.runs])
        return ratios


# ---- ComfyUI core EasyCache / LazyCache -------------------------------------------------------------------------
def _copy_input(executor, *args, **kwargs):
    return executor(args[0].clone(), *args[1:], **kwargs)


def apply_easycache(model, threshold: float, copy_input: bool, start_percent: float = 0.15, end_percent: float = 0.95):
    from comfy_extras.nodes_easycache import EasyCacheNode
    m = model
    if copy_input:        # registered before EasyCache's own key: the outer wrapper, so EasyCache sees the clone
        m = model.clone()
        m.add_wrapper_with_key(DM, "bench_copy_input", _copy_input)
    return EasyCacheNode.execute(m, threshold, start_percent, end_percent, False).args[0]


def apply_lazycache(model, threshold: float, start_percent: float = 0.15, end_percent: float = 0.95):
    from comfy_extras.nodes_easycache import LazyCacheNode
    return LazyCacheNode.execute(model, threshold, start_percent, end_percent, False).args[0]


def sencache_k(n: int, budget: int, extrapolating: bool = False) -> int:
    """SenCache: first step and the protected final step always computed; K as the node's target_speedup mode
    derives it (sencache_core.budget.k_for_target): the smallest K that can reach the budget
    (results/archive/experiments: at 1/2 of the steps K = 2 beat the reference README's K = 3 by 2.6 ± 0.5 dB), and
    at least 6 at ≤ 35 % of the steps in runs that extrapolate (output_extrapolated without CFG)."""
    return k_for_target(n, budget, {0, n - 1}, extrapolating)


MAGCACHE_RETENTION = 0.1


def magcache_k(n: int, budget: int, retention: float = MAGCACHE_RETENTION) -> int:
    """MagCache: the first retention·n steps always computed; floor K = 2 (the authors' Wan 2.1 default)."""
    return k_for_budget(n, budget, set(range(int(round(retention * n)))), 2)
