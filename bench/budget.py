"""Budget mode as the node runs it: quality at target_speedup 2, 3 and 4, and which steps each run computes.

    .dev/venv/bin/python -m bench budget --weights recipe_wide --config dpmpp_2m_40_cfg1_shift3 --samples 6
    .dev/venv/bin/python -m bench budget ... --reuse-start 0.06     # the node's reuse_start_percent
    .dev/venv/bin/python -m bench budget ... --extrapolation        # also: plain change vs extrapolation error per step

Per configuration (bench.quality.CONFIGS) and model: a profile from the Sensitivity Calibrator as a user makes it (one
prompt, the first calibration sample's; 4 runs), then SenCache with the node's defaults in budget mode at each target
on the first --samples test samples. Prints PSNR against the uncached run (mean ± SE), every run's computed steps
(C = computed, . = reused) and the paired difference between neighbouring targets (does quality fall with more
evaluations?). --extrapolation: along uncached runs, per step j, the RMS of the plain change ‖f_j − f_{j−1}‖ (what
reusing the last output costs) and of the error of extrapolating f_j linearly in σ from f_{j−1}, f_{j−2} (what an
extrapolated reuse costs). Writes results/budget/<model>_<config>[_reuse<p>].md.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import common as C  # noqa: E402
from bench import quality as Q  # noqa: E402

OUT = REPO / "results" / "budget"
TARGETS = (2.0, 3.0, 4.0)


def extrapolation_rows(model, cfg: dict, samples) -> list[tuple]:
    """(σ_j, Δσ, plain change, extrapolation error) per step j ≥ 2, means over the samples' uncached runs."""
    import comfy.patcher_extension
    seen = []

    def record(executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        to = next((a for a in reversed(args) if isinstance(a, dict)), kwargs.get("transformer_options"))
        seen.append((float(to["sigmas"].flatten()[0]), out.detach().float().clone()))
        return out
    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "bench_budget_record", record)
    runs = []
    for text, seed in samples:
        seen.clear()
        C.sample(m, text, seed, cfg["steps"], cfg["cfg"], cfg["sampler"], cfg["scheduler"])
        sig, f = [s for s, _ in seen], [o for _, o in seen]
        rows = []
        for j in range(2, len(f)):
            rms = lambda t: float(t.pow(2).mean().sqrt())
            ext = f[j - 1] + (sig[j] - sig[j - 1]) / (sig[j - 1] - sig[j - 2]) * (f[j - 1] - f[j - 2])
            rows.append((sig[j], sig[j - 1] - sig[j], rms(f[j] - f[j - 1]), rms(f[j] - ext)))
        runs.append(rows)
    return [(runs[0][j][0], runs[0][j][1], float(np.mean([r[j][2] for r in runs])),
             float(np.mean([r[j][3] for r in runs]))) for j in range(len(runs[0]))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="demo", help="a name from bench.common.MODELS or a safetensors path")
    ap.add_argument("--config", default="dpmpp_2m_40_cfg1_shift3", help="a name from bench.quality.CONFIGS")
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--reuse-start", type=float, default=0.0, help="the node's reuse_start_percent")
    ap.add_argument("--extrapolation", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    weights = C.resolve_weights(args.weights)
    nodes, sc, _ = C.boot(weights=weights)
    import logging
    logging.getLogger().setLevel(logging.WARNING)
    cfg = Q.CONFIGS[args.config]
    N = cfg["steps"]
    model = C.with_shift(C.load_model(weights), cfg["shift"])
    text0, seed0 = Q.calibration_samples(4)[0]
    pos, neg = C.conds(text0)
    with torch.inference_mode():
        _, profile = sc.calibrate.calibrate(model, pos, neg, {"samples": C.empty_latent()}, seed0, N, cfg["cfg"],
                                            cfg["sampler"], cfg["scheduler"], 4)
    samples = Q.test_samples(args.samples)
    refs = {s: C.decode(C.sample(model, s[0], s[1], N, cfg["cfg"], cfg["sampler"], cfg["scheduler"]).latent)
            for s in samples}
    name = pathlib.Path(weights).stem
    L = [f"# Budget mode: `{args.config}` on `{name}`", "",
         f"{cfg['sampler']}, {cfg['scheduler']}, {N} steps, CFG {cfg['cfg']:g}, shift {cfg['shift']:g}; the node's "
         f"defaults in budget mode (reuse_start_percent {args.reuse_start:g}), a Calibrator profile (4 runs of "
         f"'{text0}'); {len(samples)} test samples; PSNR against the uncached run.", "",
         f"Command: `python -m bench budget {' '.join(argv if argv is not None else sys.argv[1:])}`", ""]
    psnr = {}
    for target in TARGETS:
        st = sc.runtime.SenCacheSettings(**sc.runtime.NODE_DEFAULTS, reuse_mode="output_extrapolated",
                                         target_speedup=target, reuse_start_percent=args.reuse_start)
        cached, holder = sc.apply.apply_sencache(model, profile, st)
        vals, pats = [], []
        for s in samples:
            r = C.sample(cached, s[0], s[1], N, cfg["cfg"], cfg["sampler"], cfg["scheduler"])
            pats.append("".join("." if x.reuse else "C" for x in holder.last_trace.steps))
            vals.append(C.psnr(C.decode(r.latent), refs[s]))
        psnr[target] = vals
        se = np.std(vals, ddof=1) / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")
        L += [f"## target {target:g}×: PSNR {np.mean(vals):.2f} ± {se:.2f} dB", "",
              *[f"    {p}  {p.count('C')} computed, {v:.1f} dB" for p, v in zip(pats, vals)], ""]
    for hi, lo in zip(TARGETS[:-1], TARGETS[1:]):
        d = np.array(psnr[hi]) - np.array(psnr[lo])
        L.append(f"- {hi:g}× − {lo:g}× (paired): {d.mean():+.2f} ± {d.std(ddof=1) / math.sqrt(len(d)):.2f} dB")
    if args.extrapolation:
        L += ["", "## Plain change against extrapolation error along uncached runs (means over the samples)", "",
              "| σ_j | Δσ | ‖f_j − f_j−1‖ (RMS) | extrapolation error (RMS) | ratio |", "|---|---|---|---|---|"]
        for s, ds, plain, ext in extrapolation_rows(model, cfg, samples):
            L.append(f"| {s:.4f} | {ds:.4f} | {plain:.4f} | {ext:.4f} | {ext / max(plain, 1e-12):.2f} |")
    text = "\n".join(L) + "\n"
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_reuse{args.reuse_start:g}" if args.reuse_start else ""
    (out / f"{name}_{args.config}{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
