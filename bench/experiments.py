"""Issue-4 experiments: variants of SenCache's policy on the quality benchmark, at exactly equal evaluation counts.

    .dev/venv/bin/python -m bench.experiments --config wan_template --samples 8

Each variant is the pack's SenCache node code with one thing changed (the table at the top of the report says
what); every variant gets the same per-sample threshold search as the benchmark (bench/quality.py match_budgets),
so all rows use exactly the same number of model evaluations per sample. Variants that need code the pack does not
have (step-size-weighted ε, first-order extrapolation) are implemented here, as a subclass of the pack's RunState
(given to the pack through apply_sencache(run_class=...)) and of ReusePolicy, so that a losing idea never reaches the pack. Writes results/experiments/<config>.md and .json.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import pathlib
import shlex
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import common as C  # noqa: E402
from bench import quality as Q  # noqa: E402

OUT = REPO / "results" / "experiments"

# name -> (what it changes, settings overrides); K None = the benchmark's budget-derived K (bench/methods.sencache_k)
VARIANTS = {
    "SenCache (output)": ("benchmark setting: ε_start = 0.2·ε_main, ε switch at 20 %, K = the smallest K that can reach the budget (2, 3, 4; rounds 1–2 used 3, 3, 4), mean α, 4 calibration runs", {}),
    "SenCache K=2": ("K = 2 at every budget", {"K": 2}),
    "SenCache K=6": ("K = 6 at every budget", {"K": 6}),
    "SenCache no ε_start": ("ε_start = ε_main (no stricter early phase)", {"eps_ratio": 1.0}),
    "SenCache p90 α": ("the profile's 90th-percentile α instead of the mean", {"high_percentile": True}),
    "SenCache step-weighted ε": ("ε(σ) scaled by mean step / this step (Δσ to the next σ): the error a reused output "
                                 "injects into the latent is ~ step size × output error", {"step_weighted": True}),
    "SenCache extrapolated": ("reuse f(σ_r) + (σ − σ_r)·(f(σ_r) − f(σ_r'))/(σ_r − σ_r') from the last two computed "
                              "outputs instead of f(σ_r)", {"mode": "extrapolate"}),
    "SenCache K tight": ("K = the smallest K with which the budget is reachable (2, 3, 4 at 50/33/25 %)", {"K": "tight"}),
    "SenCache K tight + p90 α": ("both of the above", {"K": "tight", "high_percentile": True}),
    "SenCache ε_start 0.1": ("ε_start = 0.1·ε_main (stricter early phase)", {"eps_ratio": 0.1}),
    "SenCache switch 35 %": ("ε_start until 35 % of the schedule instead of 20 %", {"switch": 0.35}),
    "SenCache K tight + ε_start 0.1": ("K tight and ε_start = 0.1·ε_main", {"K": "tight", "eps_ratio": 0.1}),
    "SenCache online α": ("per-sample online correction: at each refresh after reuse, the observed RMS change of the "
                          "output (new − cached, cond) over the predicted S updates a running factor (geometric mean, "
                          "clamped to [1/4, 4]) that multiplies α for the rest of the run", {"online": True}),
    "SenCache residual": ("reuse the residual of the transformer blocks and re-run embeddings and output head at "
                          "the current σ (the reference implementation's choice)", {"mode": "residual"}),
    "SenCache at shift 4": ("caching combined with a re-tuned shift: the model patched with shift 4 instead of the "
                            "config's shift (profile calibrated at shift 4), N steps, ε searched", {"shift": 4.0}),
    "SenCache at shift 3": ("the same at shift 3", {"shift": 3.0}),
    "SenCache profile 1 run": ("profile from 1 calibration run instead of 4", {"profile": {"runs": 1}}),
    "SenCache profile euler": ("profile calibrated with the euler sampler, used under this config's sampler",
                               {"profile": {"sampler": "euler"}}),
    "SenCache profile 50 steps": ("profile calibrated at 50 steps, used at this config's step count", {"profile": {"steps": 50}}),
    "SenCache profile 15 steps": ("profile calibrated at 15 steps, used at this config's step count", {"profile": {"steps": 15}}),
    "SenCache output_extrapolated (pack)": ("the pack's reuse_mode output_extrapolated: extrapolation as above, applied "
                                            "only in runs without an uncond pass", {"mode": "output_extrapolated"}),
    "SenCache extrapolated cond Δ": ("with CFG: every branch reuses its cached output plus the cond branch's first-order "
                                     "extrapolation step slope·(c_r − c_p), so the guided output moves by that step once, "
                                     "not amplified by the guidance scale; without CFG the same as output_extrapolated",
                                     {"mode": "extrapolate_delta", "delta_from": "cond"}),
    "SenCache extrapolated uncond Δ": ("the same with the uncond branch's extrapolation step",
                                       {"mode": "extrapolate_delta", "delta_from": "uncond"}),
    "SenCache extrapolated K=4": ("output_extrapolated (pack) with K = 4 at every budget", {"mode": "output_extrapolated", "K": 4}),
    "SenCache extrapolated K=6": ("output_extrapolated (pack) with K = 6 at every budget", {"mode": "output_extrapolated", "K": 6}),
    "SenCache extrapolated K=4 no ε_start": ("output_extrapolated, K = 4, ε_start = ε_main",
                                            {"mode": "output_extrapolated", "K": 4, "eps_ratio": 1.0}),
    "SenCache extrapolated K=8 no ε_start": ("output_extrapolated, K = 8, ε_start = ε_main",
                                            {"mode": "output_extrapolated", "K": 8, "eps_ratio": 1.0}),
    "SenCache extrapolated no ε_start": ("output_extrapolated, budget K, ε_start = ε_main",
                                        {"mode": "output_extrapolated", "eps_ratio": 1.0}),
    "SenCache switch 10 %": ("ε_start until 10 % of the schedule instead of 20 %", {"switch": 0.10}),
    "SenCache ε_start 0.5": ("ε_start = 0.5·ε_main (milder early phase)", {"eps_ratio": 0.5}),
    "SenCache (output-input)": ("reuse f − x (EasyCache's choice; the node's other reuse mode)", {"mode": "output_minus_input"}),
}
ANCHORS = ("Fixed interval (output)", "Fewer steps (shift 8)")
BASE = "SenCache (output)"      # the first row of every round; Δ are against it


def experimental_run_class(sc):
    """A subclass of the pack's RunState for the variants the pack does not implement, handed to the pack through
    its public extension point (apply_sencache(run_class=...)); it overrides only RunState's documented hooks."""
    R = sc.runtime
    from sencache_core.policy import ReusePolicy

    @dataclasses.dataclass(frozen=True)
    class StepWeightedPolicy(ReusePolicy):
        sigmas: tuple = ()

        def eps_at(self, sigma: float) -> float:
            base = super().eps_at(sigma)
            s = [v for v in self.sigmas]
            steps = [s[i] - s[i + 1] for i in range(len(s) - 1)]
            i = min(range(len(steps)), key=lambda j: abs(s[j] - sigma))
            return base * (float(np.mean(steps)) / max(steps[i], 1e-12))

    extrapolate = importlib.import_module(f"{sc.pack.__name__}.sencache_core.reuse").extrapolate

    class ExpRunState(R.RunState):
        def __init__(self, holder, model_sampling, sample_sigmas):
            super().__init__(holder, model_sampling, sample_sigmas)
            if getattr(holder.settings, "step_weighted", False):
                g = self.plan.guided
                fields = {f.name: getattr(g, f.name) for f in dataclasses.fields(ReusePolicy)}
                self.plan = dataclasses.replace(self.plan, guided=StepWeightedPolicy(**fields, sigmas=self.plan.sigmas))
            # "extrapolate": the pack's output_extrapolated history, but extrapolating with CFG too (the pack does not)
            self.always_extrapolate = self.mode == "extrapolate"
            self.delta_from = getattr(holder.settings, "delta_from", None) if self.mode == "extrapolate_delta" else None
            if self.always_extrapolate or self.delta_from:
                self.mode = "output_extrapolated"
            self.online = getattr(holder.settings, "online", False)
            self.branch_key: dict = {}
            self.log_ratios: list = []
            self.cond_or_uncond: list = []

        def keeps_previous(self, stream):
            return self.mode == "output_extrapolated" and (self.always_extrapolate or bool(self.delta_from)
                                                           or not stream.saw_uncond)

        def before_call(self, x, transformer_options):
            self.cond_or_uncond = list(transformer_options.get("cond_or_uncond") or [])
            return super().before_call(x, transformer_options)

        def reused_output(self, stream, keys, sigma, parts):
            if not (self.delta_from and stream.saw_uncond):
                return super().reused_output(stream, keys, sigma, parts)   # extrapolates whenever it keeps history
            # one extrapolation step, taken from one branch and added to every branch's cached output
            cou = self.cond_or_uncond
            want = 0 if self.delta_from == "cond" else 1
            src = self.branch_key.get(want)
            if want in cou:
                src = keys[cou.index(want)]
                self.branch_key[want] = src
            if src is None or src not in stream.previous or stream.previous[src][1][0].shape != stream.cache[src][0].shape:
                return [torch.cat([stream.cache[k][0] for k in keys], dim=0)]
            c_r = stream.cache[src][0]
            step = extrapolate(stream.previous[src][1][0], stream.previous[src][0], c_r, stream.cache_sigma[src], sigma) - c_r
            return [torch.cat([stream.cache[k][0] + step for k in keys], dim=0)]

        def store_computed(self, call, x_parts, out_parts):
            stream, record, keys = call.stream, call.record, call.keys
            old = stream.cache.get(keys[0])
            super().store_computed(call, x_parts, out_parts)
            if self.online and record.score and record.index > 0 and keys[0] in stream.cache and old is not None:
                observed = float((stream.cache[keys[0]][0] - old[0]).pow(2).mean().sqrt())
                if observed > 0:
                    self.log_ratios.append(float(np.log(observed / record.score)))
                    c = float(np.clip(np.exp(np.mean(self.log_ratios)), 0.25, 4.0))
                    ps = stream.policy_state
                    if ps.alpha_ref is not None:
                        g = self.plan.guided
                        base = g.profile.lookup(ps.sigma_ref, g.high_percentile)
                        ps.alpha_ref = (base[0] * c, base[1] * c)

        def model_call(self, executor, args, kwargs, to):
            """"residual": reuse the residual of the transformer-block stack and re-run the rest of the model (patch
            embedding, time embedding, output head) at the current σ, as the reference implementation does. Wan runs
            each block through transformer_options["patches_replace"]["dit"][("double_block", i)] when present."""
            if self.mode != "residual":
                return super().model_call(executor, args, kwargs, to)
            blocks = executor.class_obj.blocks
            n = len(blocks)
            keys = tuple(to.get("uuids") or [None])
            store = self.__dict__.setdefault("residuals", {})
            reused, call = self.before_call(args[0], to)
            dit = dict(to.get("patches_replace", {}).get("dit", {}))
            if call is None:
                res = store.get(keys)
                if res is None:
                    return reused                       # no residual yet: plain output reuse (cannot happen after step 0)
                for i in range(n):
                    dit[("double_block", i)] = ((lambda a, o, r=res: {"img": a["img"] + r}) if i == 0
                                                else (lambda a, o: {"img": a["img"]}))
                to["patches_replace"] = dict(to.get("patches_replace", {}), dit=dit)
                COUNTER.skip = True                     # blocks skipped: not a model evaluation
                try:
                    return executor(*args, **kwargs)
                finally:
                    COUNTER.skip = False
                    to["patches_replace"]["dit"] = {k: v for k, v in dit.items() if k[0] != "double_block"}
            box = {}

            def first(a, o):
                box["in"] = a["img"]
                return o["original_block"](a)

            def last(a, o):
                out = o["original_block"](a)
                box["res"] = out["img"] - box["in"] if n > 1 else out["img"] - a["img"]
                return out
            dit[("double_block", 0)] = first if n > 1 else last
            dit[("double_block", n - 1)] = last
            to["patches_replace"] = dict(to.get("patches_replace", {}), dit=dit)
            out = executor(*args, **kwargs)
            self.after_call(call, args[0], out)
            if "res" in box:
                store[keys] = box["res"].detach().clone()
            return out

    return ExpRunState


class ExpCounter(C.EvalCounter):
    """The benchmark's counter, plus: calls made with `skip` set (blocks skipped) are neither counted nor memoised."""
    skip = False

    def _forward(self, x, timestep, context, *args, **kwargs):
        if self.skip:
            return self.original(x, timestep, context, *args, **kwargs)
        return super()._forward(x, timestep, context, *args, **kwargs)


COUNTER: ExpCounter | None = None


class ExpBench(Q.Bench):
    def __init__(self, *a, **kw):
        global COUNTER
        super().__init__(*a, **kw)
        self.counter.close()
        self.counter = COUNTER = ExpCounter(self.base, memo=True)
        self.run_class = experimental_run_class(self.sc)

    def run(self, model, text, seed, steps=None):
        # the memo would return a full forward's output without running the blocks, so no residual would be
        # recorded: residual runs go without it
        h = self.sc.runtime.find_holder(model)
        residual = h is not None and h.settings.reuse_mode == "residual"
        memo, self.counter.memo_on = self.counter.memo_on, self.counter.memo_on and not residual
        try:
            return super().run(model, text, seed, steps)
        finally:
            self.counter.memo_on = memo

    def calibrate_profile(self, cal, spec: dict | None = None):
        """The profile as the benchmark makes it (one on-trajectory run per calibration sample, merged), or with
        spec's runs / sampler / steps / shift changed."""
        spec = spec or {}
        profs = []
        model = C.with_shift(self.base, spec["shift"]) if "shift" in spec else self.model
        for text, seed in cal[:spec.get("runs", len(cal))]:
            pos, neg = C.conds(text)
            with torch.inference_mode():
                _, prof = self.sc.calibrate.calibrate(model, pos, neg, {"samples": C.empty_latent()}, seed,
                                                      spec.get("steps", self.N), self.cfg["cfg"],
                                                      spec.get("sampler", self.cfg["sampler"]), self.cfg["scheduler"], 1)
            profs.append(prof)
        self.counter.clear_memo()
        return self.sc.core.merge_profiles(profs) if len(profs) > 1 else profs[0]

    def make(self, name, B, p=None):
        from bench import methods as M
        if name in VARIANTS:
            o = VARIANTS[name][1]
            ratio = o.get("eps_ratio", 0.2)
            K = o.get("K") or M.sencache_k(self.N, B)
            if K == "tight":
                K = M.k_for_budget(self.N, B, {0, self.N - 1}, 1)
            base = dict(eps_start=ratio * p, eps_main=p, max_consecutive=K, reuse_mode=o.get("mode", "output"),
                        high_percentile=o.get("high_percentile", False), eps_switch_percent=o.get("switch", 0.2))
            S = self.sc.runtime.SenCacheSettings
            if o.get("step_weighted"):
                S = dataclasses.make_dataclass("StepWeightedSettings", [("step_weighted", bool, True)], bases=(S,))
            if o.get("online"):
                S = dataclasses.make_dataclass("OnlineSettings", [("online", bool, True)], bases=(S,))
            if o.get("delta_from"):
                S = dataclasses.make_dataclass("DeltaSettings", [("delta_from", str, o["delta_from"])], bases=(S,))
            st = S(**base)
            profile = self.profiles[name] if name in self.profiles else self.profile
            if o.get("shift"):
                return self.sc.apply.apply_sencache(C.with_shift(self.base, o["shift"]), profile, st,
                                                    run_class=self.run_class)[0], self.N
            if o.get("mode") in ("extrapolate", "residual", "extrapolate_delta"):
                # apply_sencache validates reuse_mode: build with "output", then switch the mode on the holder
                st = dataclasses.replace(st, reuse_mode="output")
                model = self.sc.apply.apply_sencache(self.model, profile, st, run_class=self.run_class)[0]
                holder = self.sc.runtime.find_holder(model)
                holder.settings = dataclasses.replace(holder.settings, reuse_mode=o["mode"])
                return model, self.N
            return self.sc.apply.apply_sencache(self.model, profile, st, run_class=self.run_class)[0], self.N
        return super().make(name, B, p)

    @staticmethod
    def adaptive(name):
        return name in VARIANTS


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="wan_template")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--calibration-samples", type=int, default=4)
    ap.add_argument("--variants", nargs="*", default=None, help="names from VARIANTS (default: all)")
    ap.add_argument("--weights", default=str(C.WEIGHTS))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--validation", action="store_true",
                    help="draw the samples from a validation set (other prompts and seeds than the benchmark's test "
                         "samples), to choose settings without tuning them on the samples they are reported on")
    args = ap.parse_args(argv)
    command = "python -m bench.experiments " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    torch.set_num_threads(args.threads)
    import logging
    logging.getLogger().setLevel(logging.WARNING)
    nodes, sc, _ = C.boot(weights=args.weights)
    logging.getLogger().setLevel(logging.WARNING)
    t0 = time.perf_counter()
    snap = pathlib.Path(tempfile.mkdtemp(prefix="sencache_w_")) / pathlib.Path(args.weights).name
    shutil.copy2(args.weights, snap)
    winfo = C.weights_info(snap)
    cfg = Q.CONFIGS[args.config]
    bench = ExpBench(cfg, snap, sc, print, use_vgg=False)
    budgets = Q.budgets_for(cfg["steps"])
    variants = [v for v in VARIANTS if args.variants is None or v in args.variants]
    if BASE not in variants:
        variants.insert(0, BASE)
    methods = variants + list(ANCHORS)
    cal = Q.calibration_samples(args.calibration_samples)
    bench.profile = bench.calibrate_profile(cal)
    bench.profiles = {v: bench.calibrate_profile(cal, VARIANTS[v][1].get("profile") or {"shift": VARIANTS[v][1]["shift"]})
                      for v in variants if "profile" in VARIANTS[v][1] or "shift" in VARIANTS[v][1]}
    results, priors = [], {}
    samples = Q.sample_list(args.samples, 31337, 3000) if args.validation else Q.test_samples(args.samples)
    for i, (text, seed) in enumerate(samples):
        ts = time.perf_counter()
        results.append(bench.run_sample(text, seed, budgets, methods, priors))
        print(f"  sample {i + 1}/{args.samples} '{text}' seed {seed}: {time.perf_counter() - ts:.1f} s", flush=True)
    table = Q.summarise(results, methods, budgets, None, baseline=BASE)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.config + (f"_{args.tag}" if args.tag else "")
    lines = [f"# SenCache variants on `{args.config}` ({cfg})", "",
             f"Command: `{command}`  ", f"Weights: {winfo.get('training_steps')} training steps, sha256 {winfo.get('sha256', '')[:8]}; "
             f"{args.samples} {'validation' if args.validation else 'test'} samples; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
             f"{(time.perf_counter() - t0) / 60:.1f} min.", "",
             "PSNR (dB) against the uncached run of the same sample, mean ± SE over samples matched at exactly the budget; "
             "Δ = paired difference vs the first row (positive = better than the benchmark's SenCache setting). "
             "SSIM is given for the record; VGG distance is off here (CPU time).", "",
             "| variant | what changes |", "|---|---|"]
    lines += [f"| {v} | {VARIANTS[v][0]} |" for v in variants]
    for B in budgets:
        lines += ["", f"## {B} of {cfg['steps']} evaluations", "",
                  "| method | matched | PSNR | ΔPSNR vs SenCache (output) | SSIM |", "|---|---|---|---|---|"]
        for m in methods:
            r = table[B][m]
            lines.append(f"| {m} | {r['matched']}/{r['n']} | {Q._fmt(*r['psnr'][:2])} | "
                         f"{Q._fmt(*r['vs_baseline']['psnr'][:2])} | {Q._fmt(*r['ssim'][:2], digits=4)} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    with open(out / f"{name}.json", "w") as f:
        json.dump({"config": cfg, "weights": winfo, "variants": {v: VARIANTS[v][0] for v in variants},
                   "results": Q._jsonable(results), "table": Q._jsonable(table)}, f, indent=1)
    print("\n".join(lines))
    print(f"-> {out / (name + '.md')}")


if __name__ == "__main__":
    main()
