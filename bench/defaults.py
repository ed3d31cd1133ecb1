"""Do the SenCache node's defaults give a real, predictable speed-up on any model? Evaluations computed and PSNR of
the default settings per model and configuration.

    .dev/venv/bin/python -m bench defaults --weights final=demo_model/weights/sencache_demo_wan.safetensors \
        other=/path/to/other_weights.safetensors --samples 8

Per model and configuration (bench.quality.CONFIGS): a profile calibrated as the quality benchmark does (one
Calibrator run per calibration sample, merged), then per test sample the uncached reference and SenCache with each
setting in SETTINGS, through the pack's node code (apply_sencache). Reported: model evaluations computed per run
(mean, min–max), the speed-up in evaluations (N / computed), runs that reused nothing, PSNR against the reference.
Writes a markdown table to --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import shlex
import sys

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import common as C  # noqa: E402
from bench import quality as Q  # noqa: E402

# name -> SenCacheSettings keyword arguments; "ε default" = the node's ε inputs as they were before budget mode
# became the default (eps_main 0.1, eps_start 0.02, K 3)
SETTINGS = {
    "ε 0.1 (old default)": dict(eps_start=0.02, eps_main=0.1, max_consecutive=3),
    "target 2× (budget mode)": dict(eps_start=0.02, eps_main=0.1, max_consecutive=3, target_speedup=2.0),
    "target 3× (budget mode)": dict(eps_start=0.02, eps_main=0.1, max_consecutive=3, target_speedup=3.0),
}
CONFIG_NAMES = ("wan_template", "euler_20_cfg4_shift5", "dpmpp_2m_40_cfg3_shift3", "euler_30_cfg1", "uni_pc_20_cfg1_shift3")


def run_model(label, weights, sc, configs, n_samples, n_cal, log) -> list[dict]:
    base = C.load_model(weights)
    counter = C.EvalCounter(base)
    rows = []
    try:
        for name in configs:
            cfg = Q.CONFIGS[name]
            model = C.with_shift(base, cfg["shift"])
            N = cfg["steps"]
            profs = []
            for text, seed in Q.calibration_samples(n_cal):
                pos, neg = C.conds(text)
                with torch.inference_mode():
                    profs.append(sc.calibrate.calibrate(model, pos, neg, {"samples": C.empty_latent()}, seed, N, cfg["cfg"],
                                                        cfg["sampler"], cfg["scheduler"], 1)[1])
            profile = sc.core.merge_profiles(profs) if len(profs) > 1 else profs[0]
            run = lambda m, t, s: C.sample(m, t, s, N, cfg["cfg"], cfg["sampler"], cfg["scheduler"], counter)
            per = {k: {"evals": [], "psnr": []} for k in SETTINGS}
            for text, seed in Q.test_samples(n_samples):
                ref = run(model, text, seed)
                ref_frames = C.decode(ref.latent)
                for k, kw in SETTINGS.items():
                    m = sc.apply.apply_sencache(model, profile, sc.runtime.SenCacheSettings(**kw))[0]
                    r = run(m, text, seed)
                    per[k]["evals"].append(r.evaluations)
                    per[k]["psnr"].append(min(C.psnr(C.decode(r.latent), ref_frames), Q.PSNR_CAP))
            for k, d in per.items():
                e, p = np.asarray(d["evals"]), np.asarray(d["psnr"])
                rows.append({"model": label, "config": name, "setting": k, "N": N, "evals_mean": float(e.mean()),
                             "evals_min": float(e.min()), "evals_max": float(e.max()), "speedup": float(N / e.mean()),
                             "no_reuse": int((e >= N).sum()), "n": int(e.size), "psnr": float(p.mean()),
                             "psnr_se": float(p.std(ddof=1) / math.sqrt(p.size)) if p.size > 1 else float("nan")})
                log(f"  {label} {name} {k}: evals {e.mean():.1f} ({e.min():g}-{e.max():g}) of {N}, "
                    f"PSNR {p.mean():.2f}")
    finally:
        counter.close()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", default=[f"final={C.WEIGHTS}"], help="label=path of each model")
    ap.add_argument("--configs", nargs="+", default=list(CONFIG_NAMES))
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--calibration-samples", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "results" / "defaults" / "defaults.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import logging
    logging.getLogger().setLevel(logging.WARNING)
    _, sc, _ = C.boot()
    logging.getLogger().setLevel(logging.WARNING)
    log = lambda *a: print(*a, flush=True)
    rows, infos = [], {}
    for spec in args.weights:
        label, path = spec.split("=", 1)
        infos[label] = C.weights_info(path)
        rows += run_model(label, path, sc, args.configs, args.samples, args.calibration_samples, log)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ".dev/venv/bin/python -m bench defaults " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    L = ["# SenCache defaults on more than one model", "",
         f"- Command: `{cmd}`",
         f"- Ran {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC; {args.samples} test samples "
         f"per cell (the quality benchmark's first ones), profile from {args.calibration_samples} calibration runs of the "
         "same configuration.",
         *[f"- Model `{k}`: `{v['path']}` sha256 `{v['sha256'][:8]}`, training steps {v['training_steps']} (loss {v['loss']})"
           for k, v in infos.items()],
         "- evals = model evaluations computed per run (mean, min–max over samples); speed-up = N / mean evals; "
         "'no reuse' = runs that computed every step; PSNR (dB, ± SE) against the same sample's uncached run.", "",
         "| model | config | setting | evals of N | speed-up | no reuse | PSNR dB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['model']} | {r['config']} | {r['setting']} | {r['evals_mean']:.1f} ({r['evals_min']:g}–{r['evals_max']:g}) "
                 f"of {r['N']} | {r['speedup']:.2f}× | {r['no_reuse']}/{r['n']} | {r['psnr']:.2f} ± {r['psnr_se']:.2f} |")
    out.write_text("\n".join(L) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": cmd, "weights": infos, "rows": rows}, indent=1))
    log(f"-> {out}")


if __name__ == "__main__":
    main()
