"""The Sensitivity Calibrator's caching-or-fewer-steps verdict with a given number of runs, as a user would make it.

    .dev/venv/bin/python -m bench verdict --weights recipe_deep --config dpmpp_2m_40_cfg3_shift3 --runs 8

The Calibrator with tune_schedule on, one prompt (the first calibration sample's, as bench.quality uses), `--runs`
runs from that sample's seed on; prints, per tuned fraction, the verdict (sencache_core.tuning.verdict), its held-out
difference ± SE and the schedule chosen, and — where results/wide/<model>/<config>.json exists — the truth on that
benchmark's test samples (the default minus the pack's schedule, PSNR), so the verdict's power at more runs can be
compared with the wide benchmark's 4. Writes results/verdict/<model>_<config>_runs<R>.md.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import common as C  # noqa: E402
from bench import quality as Q  # noqa: E402
from bench import wide as W  # noqa: E402

OUT = REPO / "results" / "verdict"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="demo", help="a name from bench.common.MODELS or a safetensors path")
    ap.add_argument("--config", default="wan_template", help="a name from bench.quality.CONFIGS")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    weights = C.resolve_weights(args.weights)
    nodes, sc, _ = C.boot(weights=weights)
    import logging
    logging.getLogger().setLevel(logging.WARNING)
    cfg = Q.CONFIGS[args.config]
    model = C.with_shift(C.load_model(weights), cfg["shift"])
    text0, seed0 = Q.calibration_samples(4)[0]
    pos, neg = C.conds(text0)
    t0 = time.process_time()
    with torch.inference_mode():
        _, profile = sc.calibrate.calibrate(model, pos, neg, {"samples": C.empty_latent()}, seed0, cfg["steps"],
                                            cfg["cfg"], cfg["sampler"], cfg["scheduler"], args.runs,
                                            tune_schedule=True)
    cpu = time.process_time() - t0
    tuning = profile.metadata["schedule_tuning"]
    model_name = str(args.weights) if str(args.weights) in C.MODELS else pathlib.Path(weights).stem
    bench = W.load(model_name, args.config)
    L = [f"# The Calibrator's verdict with {args.runs} runs: `{args.config}` on `{model_name}`", "",
         f"Command: `python -m bench verdict {' '.join(argv if argv is not None else sys.argv[1:])}`; one prompt "
         f"('{text0}'), seeds {seed0}…{seed0 + args.runs - 1}; Calibrator with tune_schedule: {cpu / 60:.1f} CPU min.",
         "", "| budget | verdict | held-out difference (schedule − caching error, dB) | schedule | truth on the test "
         "samples (default − pack's schedule, PSNR) |", "|---|---|---|---|---|"]
    for key, b in sc.tuning_records.tune_steps(cfg["steps"]).items():
        v = sc.tuning_records.verdict(tuning, key)
        d = "–" if v["difference_db"] is None else f"{v['difference_db']:+.2f} ± {v['se_db']:.2f} ({v['samples']})"
        truth = "–"
        if bench is not None:
            m, se, n = W.truth(bench, b)
            truth = f"{m:+.2f} ± {se:.2f} ({n})"
        L.append(f"| {b} of {cfg['steps']} | {v['winner'] or 'no clear winner'} | {d} | {v['schedule']} | {truth} |")
    text = "\n".join(L) + "\n"
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{model_name}_{args.config}_runs{args.runs}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
