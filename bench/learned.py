"""Learned profile vs Calibrator profile: quality at EXACTLY matched evaluations on the demo model.

    .dev/venv/bin/python -m bench learned --config wan_template --samples 8
    .dev/venv/bin/python -m bench learned --config euler_30_cfg1 --weights demo_model/weights/<other>.safetensors

Per configuration (bench.quality.CONFIGS), through the real ComfyUI sampler and this pack's node code:
- Calibrator profile: the Sensitivity Calibrator (nodes.calibrate.calibrate, one extra evaluation per step) on the
  calibration samples, one run each, merged: what bench.quality uses.
- Learned profile, 1 run: the SenCache node with no profile (learn mode) sampling calibration sample 0 once; the
  profile it stores; with each learn-mode estimator (--estimators): "trajectory" (the node's: the Calibrator's
  on-trajectory estimator, one extra evaluation per step in the learning run) and "free" (no extra evaluation:
  sencache_core.learn.fit_profile on the pairs of computed evaluations). Learned, R runs (--learning-runs R):
  calibration samples 0..R-1.
- Test samples (bench.quality.test_samples, disjoint from calibration): the uncached reference, then each profile at
  budgets of 1/2, 1/3, 1/4 of N evaluations, ε_main searched per sample until the run computes exactly the budget
  (bench.quality.match_budgets), ε_start = 0.2·ε_main, K as the node's budget mode chooses it, the node's default
  reuse mode. PSNR vs the sample's uncached frames; paired difference vs the Calibrator profile, mean ± SE.
- Also: each profile at the node's default inputs (ε_main 0.1, ε_start 0.02, K 3), evaluations and PSNR: what a
  user gets without touching a setting (the evaluation counts differ there, so this is not a matched comparison).
Writes results/learned/<config>.md and .json.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
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
from bench import quality as Q  # noqa: E402

OUT = REPO / "results" / "learned"
CALIBRATED = "SenCache, Calibrator profile"
MODE = "output_extrapolated"      # the node's default reuse mode


def learned_name(runs: int, estimator: str) -> str:
    how = "one extra pass per step" if estimator == "trajectory" else "no extra pass"
    return f"SenCache, learned profile ({runs} run{'s' if runs > 1 else ''}, {how})"


class LearnBench(Q.Bench):
    """bench.quality.Bench whose SenCache rows differ only in the profile."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.profiles: dict = {}

    def make(self, name, B, p=None):
        from bench import methods as M
        K = M.sencache_k(self.N, B, self.cfg["cfg"] == 1.0)
        st = self.sc.runtime.SenCacheSettings(eps_start=0.2 * p, eps_main=p, max_consecutive=K, reuse_mode=MODE)
        return self.sc.apply.apply_sencache(self.model, self.profiles[name], st)[0], self.N

    def calibrator_profile(self, cal):
        """(the merged Calibrator profile of the calibration samples, model evaluations its runs made)."""
        profs, rows = [], 0
        self.counter.memo_on = False
        try:
            for text, seed in cal:
                pos, neg = C.conds(text)
                self.counter.reset()
                with torch.inference_mode():
                    _, prof = self.sc.calibrate.calibrate(self.model, pos, neg, {"samples": C.empty_latent()}, seed,
                                                          self.N, self.cfg["cfg"], self.cfg["sampler"],
                                                          self.cfg["scheduler"], 1)
                rows += self.counter.rows
                profs.append(prof)
        finally:
            self.counter.memo_on = True
        evals = rows / (2 if self.cfg["cfg"] != 1.0 else 1)
        return (self.sc.core.merge_profiles(profs) if len(profs) > 1 else profs[0]), evals

    def learned_profile(self, cal, runs: int, estimator: str, start: int = 0):
        """Learn mode as a user runs it: the SenCache node without a profile, `runs` ordinary samplings; learning
        continues from what the store already holds for this key (runs before `start`). Returns (profile, model
        evaluations the learning runs made, extra ones included)."""
        st = self.sc.runtime.SenCacheSettings(eps_start=0.02, eps_main=0.1, max_consecutive=3, reuse_mode=MODE)
        m, holder = self.sc.apply.apply_sencache(self.model, None, st, learning_runs=runs, learn_estimator=estimator)
        evals = 0
        self.counter.memo_on = False          # count what the learning runs really evaluate
        try:
            for text, seed in cal[start:runs]:
                r = self.run(m, text, seed)
                evals += r.evaluations
                assert all(s.reason == "learning" for s in holder.last_trace.steps)
                assert holder.last_trace.computed == self.N
        finally:
            self.counter.memo_on = True
        return holder.profile, evals


def along_trajectory(profile, ref_profile) -> float:
    """Mean over the reference's σ grid of the predicted change per unit σ along its trajectories,
    α_x·dx_per_sigma + α_t, of `profile` divided by that of `ref_profile` (dx_per_sigma from the reference)."""
    s = ref_profile.sigmas
    num = np.interp(s, profile.sigmas, profile.alpha_x) * ref_profile.dx_per_sigma + np.interp(s, profile.sigmas, profile.alpha_t)
    den = ref_profile.alpha_x * ref_profile.dx_per_sigma + ref_profile.alpha_t
    return float(np.mean(num / den))


def run_config(name, args, sc, info):
    cfg = dict(Q.CONFIGS[name], **({"steps": args.steps} if args.steps else {}))
    log = lambda *a: print(*a, flush=True)
    t0 = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc)
    b = LearnBench(cfg, args.weights, sc, log=log, use_vgg=False)
    N = cfg["steps"]
    budgets = Q.budgets_for(N, args.fractions)
    cal = Q.calibration_samples(max(args.calibration_samples, args.learning_runs))
    tc = time.perf_counter()
    b.profiles[CALIBRATED], ev = b.calibrator_profile(cal[:args.calibration_samples])
    cost = {CALIBRATED: {"seconds": round(time.perf_counter() - tc, 1), "runs": args.calibration_samples,
                         "model_evaluations": ev, "extra_evaluations": ev - N * args.calibration_samples}}
    store = pathlib.Path(importlib.import_module(f"{sc.pack.__name__}.nodes.learn").store_dir())
    for f in store.glob("*.safetensors"):     # every configuration learns afresh, as a user's first run of it would
        f.unlink()
    for est in args.estimators:
        prev = {"seconds": 0.0, "model_evaluations": 0}
        for runs in sorted({1, args.learning_runs}):      # R runs continue the stored 1-run profile (samples 1..R-1)
            tl = time.perf_counter()
            name_l = learned_name(runs, est)
            b.profiles[name_l], ev = b.learned_profile(cal, runs, est, start=0 if runs == 1 else 1)
            ev += prev["model_evaluations"]
            cost[name_l] = prev = {"seconds": round(time.perf_counter() - tl + prev["seconds"], 1), "runs": runs,
                                   "model_evaluations": ev, "extra_evaluations": ev - N * runs}
    learn_core = importlib.import_module(f"{sc.pack.__name__}.sencache_core.learn")
    for ridge in args.ridges:          # estimator variants, refitted on the 1-run profile's own observations
        base = b.profiles[learned_name(1, "free")]
        obs = learn_core.stored_observations(base)
        b.profiles[f"{learned_name(1, 'free')}, ridge {ridge:g}"] = learn_core.fit_profile(
            obs, {k: v for k, v in base.metadata.items() if k not in ("source", "estimator")}, ridge=ridge)
    b.counter.clear_memo()
    methods = list(b.profiles)
    log(f"[{name}] profiles: " + "; ".join(f"{k}: {p.describe()}" for k, p in b.profiles.items()))
    ratios = {k: along_trajectory(p, b.profiles[CALIBRATED]) for k, p in b.profiles.items()}
    samples = Q.test_samples(args.samples)
    results, priors = [], {}
    defaults = {k: [] for k in methods}
    for i, (text, seed) in enumerate(samples):
        res = b.run_sample(text, seed, budgets, methods, priors)
        ref_frames = C.decode(b.run(b.model, text, seed).latent)
        for k in methods:          # the node's default inputs, not matched
            st = sc.runtime.SenCacheSettings(eps_start=0.02, eps_main=0.1, max_consecutive=3, reuse_mode=MODE)
            r = b.run(sc.apply.apply_sencache(b.model, b.profiles[k], st)[0], text, seed)
            defaults[k].append((r.evaluations, min(C.psnr(C.decode(r.latent), ref_frames), Q.PSNR_CAP)))
        results.append(res)
        log(f"[{name}] sample {i + 1}/{len(samples)} {text!r} seed {seed}: " + "; ".join(
            f"{k.split(', ')[1]} " + " ".join(f"{B}:{res['methods'][k][B].get('psnr', float('nan')):.2f}" for B in budgets)
            for k in methods))
    table = Q.summarise(results, methods, budgets, {}, baseline=CALIBRATED)
    runtime_s = time.perf_counter() - t0
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = C.weights_info(args.weights)
    L = [f"# Learned profile vs Calibrator profile: `{name}`", "",
         f"{cfg['sampler']}, {cfg['scheduler']}, {N} steps, CFG {cfg['cfg']:g}, shift {cfg['shift']:g}, demo model "
         f"latent [1, 16, 8, 16, 16], CPU fp32, reuse mode {MODE} (the node's default).", "",
         f"- Command: `{args.command}`",
         f"- Weights: `{weights['path']}` sha256 `{weights['sha256'][:16]}…`, training steps {weights['training_steps']}",
         f"- Ran {started:%Y-%m-%d %H:%M} UTC, {runtime_s / 60:.1f} min, {info['machine']}",
         f"- {len(samples)} test prompt×seed pairs (bench.quality.test_samples), calibration/learning on other pairs "
         "(bench.quality.calibration_samples). Every number at EXACTLY the budget's evaluations per sample "
         "(ε_main searched per sample; unmatched samples excluded and listed). PSNR vs the uncached run (dB, cap "
         f"{Q.PSNR_CAP:g}), mean ± SE; Δ = paired difference vs the {CALIBRATED} (positive = the learned profile is "
         "better).", "",
         "## What each profile cost", "",
         "| profile | runs | model evaluations | of which extra | seconds |", "|---|---|---|---|---|"]
    for k, c in cost.items():
        extra = c["extra_evaluations"]
        L.append(f"| {k} | {c['runs']} | {c['model_evaluations']} | {extra} | {c['seconds']} |")
    L += ["", "Evaluations as counted everywhere here: rows that reach the model ÷ rows per sampler evaluation (2 with "
          "CFG), so an extra pass on the cond rows only counts ½ with CFG. A learning run is one of the user's own "
          "runs (every step computed and returned as is: the uncached result bit for bit) plus the extra evaluations "
          "it measures with; the Calibrator's runs are runs the user makes only to calibrate.", "",
          "Predicted change per unit σ along the calibration trajectories, relative to the Calibrator profile "
          "(mean over its σ grid of α_x·dx_per_sigma + α_t): " + ", ".join(f"{k}: {v:.3f}" for k, v in ratios.items())
          + ".", ""]
    for B in budgets:
        L += [f"## Budget {B} of {N} evaluations ({B / N:.0%})", "",
              f"| profile | matched | PSNR dB | SSIM | ΔPSNR vs Calibrator profile |", "|---|---|---|---|---|"]
        for k in methods:
            r = table[B][k]
            d = r["vs_baseline"]["psnr"]
            L.append(f"| {k} | {r['matched']}/{r['n']} | {Q._fmt(*r['psnr'][:2])} | {Q._fmt(*r['ssim'][:2], digits=4)} | "
                     + ("—" if k == CALIBRATED else Q._fmt(d[0], d[1])) + " |")
        un = [(k, r["unmatched"]) for k, r in table[B].items() if r["unmatched"]]
        if un:
            L += ["", "Unmatched: " + "; ".join(f"{k}: " + ", ".join(f"seed {s} (closest {e})" for _, s, e in u)
                                                for k, u in un)]
        L.append("")
    L += ["## At the node's default inputs (ε_main 0.1, ε_start 0.02, K 3; not matched)", "",
          "| profile | evaluations | PSNR dB |", "|---|---|---|"]
    for k in methods:
        ev = Q._mse([e for e, _ in defaults[k]])
        ps = Q._mse([p for _, p in defaults[k]])
        L.append(f"| {k} | {Q._fmt(ev[0], ev[1], 1)} | {Q._fmt(ps[0], ps[1])} |")
    L.append("")
    md = out / f"{name}{args.suffix}.md"
    md.write_text("\n".join(L))
    C.write_json(out / f"{name}{args.suffix}.json", {
        "config": cfg, "budgets": budgets, "table": {str(B): v for B, v in table.items()}, "results": results,
        "cost": cost, "along_trajectory_ratio": ratios, "defaults": defaults, "weights": weights,
        "profiles": {k: p.describe() for k, p in b.profiles.items()}, "command": args.command})
    b.counter.close()
    log("\n".join(L))
    log(f"wrote {md}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="wan_template", help="names from bench.quality.CONFIGS, comma-separated")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--calibration-samples", type=int, default=4)
    ap.add_argument("--learning-runs", type=int, default=1, help="also a learned profile of this many runs (1 is always made)")
    ap.add_argument("--estimators", nargs="+", default=["trajectory", "free"], help="learn mode estimators (nodes.learn.ESTIMATORS)")
    ap.add_argument("--ridges", type=float, nargs="*", default=[],
                    help="extra rows: the 1-run profile refitted with these ridge values (estimator variants)")
    ap.add_argument("--steps", type=int, default=None, help="override the configuration's step count (smoke tests)")
    ap.add_argument("--fractions", type=float, nargs="+", default=list(Q.FRACTIONS))
    ap.add_argument("--weights", default=str(C.WEIGHTS))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--suffix", default="", help="appended to the output file names (e.g. the weights' name)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    args.command = "python -m bench learned " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    torch.set_num_threads(args.threads)
    import logging
    logging.getLogger().setLevel(logging.WARNING)
    _, sc, _ = C.boot(weights=args.weights)
    logging.getLogger().setLevel(logging.WARNING)
    info = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch threads {args.threads}"}
    for n in args.config.split(","):
        run_config(n, args, sc, info)


if __name__ == "__main__":
    main()
