"""Does the Calibrator's tuning tell a user which option to take? Caching or fewer steps, checked on test samples.

    .dev/venv/bin/python -m bench.choose_check [--models validation demo] [--configs ...]

For every model and wide-benchmark configuration: the Sensitivity Calibrator with `tune_schedule` on, run on the
benchmark's calibration samples (the same prompts and seeds as bench.quality's calibration) and merged, predicts per
budget whether SenCache caching (budget mode) or fewer steps with the calibrated schedule comes closer to the
full-step run (RMS latent difference, the nearest tuned fraction). The wide benchmark's results
(results/wide/<model>/<config>.json) say which came closer on the held-out test samples (mean PSNR of "SenCache
(output_extrapolated)" against "Planned schedule (calibrated)"). Writes results/wide/choose_check.md and prints it.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import common as C  # noqa: E402
from bench.quality import CONFIGS, WIDE_CONFIGS, calibration_samples  # noqa: E402
from bench.wide import OUT, mean_se, paired, psnrs  # noqa: E402

CACHING = "SenCache (output_extrapolated)"
SCHEDULE = "Planned schedule (calibrated)"


def tuning_for(sc, weights, cfg: dict, n_cal: int) -> dict:
    base = C.load_model(weights)
    model = C.with_shift(base, cfg["shift"])
    profiles = []
    for text, seed in calibration_samples(n_cal):
        pos, neg = C.conds(text)
        with torch.inference_mode():
            _, prof = sc.calibrate.calibrate(model, pos, neg, {"samples": C.empty_latent()}, seed, cfg["steps"],
                                             cfg["cfg"], cfg["sampler"], cfg["scheduler"], 1, tune_schedule=True)
        profiles.append(prof)
    return sc.core.merge_profiles(profiles).metadata["schedule_tuning"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["validation", "demo"])
    ap.add_argument("--configs", nargs="*", default=list(WIDE_CONFIGS))
    ap.add_argument("--calibration-samples", type=int, default=3)
    ap.add_argument("--dir", default=str(OUT))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = pathlib.Path(args.dir)
    import logging
    _, sc, _ = C.boot(weights=C.resolve_weights(args.models[0]))
    logging.getLogger().setLevel(logging.WARNING)
    from sencache_core import tuning as T
    rows, right, total = [], 0, 0
    for model in args.models:
        weights = C.resolve_weights(model)
        for config in args.configs:
            p = root / model / f"{config}.json"
            if not p.exists():
                continue
            d = json.loads(p.read_text())
            cfg = CONFIGS[config]
            tuning = tuning_for(sc, weights, cfg, args.calibration_samples)
            for B in d["budgets"]:
                key = min(tuning["fractions"], key=lambda k: abs(math.log(float(k)) - math.log(B / cfg["steps"])))
                errs = tuning["fractions"][key]["error"]
                best = min(errs, key=errs.get)
                cache = T.caching_error(tuning, key)
                predicted = "fewer steps" if errs[best] < cache else "caching"
                mu, se, _ = paired(psnrs(d, SCHEDULE, B), psnrs(d, CACHING, B))
                measured = "fewer steps" if mu > 0 else "caching"
                clear = abs(mu) > 2 * se
                total += 1
                right += predicted == measured
                rows.append(f"| {model} | `{config}` | {B}/{cfg['steps']} | {errs[best]:.3g} ({best}) | {cache:.3g} | "
                            f"{predicted} | {mu:+.2f} ± {se:.2f} | {measured}{'' if clear else ' (within 2 SE)'} | "
                            f"{'yes' if predicted == measured else 'no'} |")
                print(rows[-1], flush=True)
    text = "\n".join([
        "# Caching or fewer steps: the Calibrator's prediction against the test samples", "",
        "Made by `python -m bench.choose_check`. Prediction: the Sensitivity Calibrator with `tune_schedule` on the "
        f"benchmark's {args.calibration_samples} calibration samples (merged), RMS latent difference from the "
        "full-step run at the nearest tuned fraction: the best calibrated schedule for fewer steps against SenCache "
        "caching in budget mode. Measured: the wide benchmark's test samples, paired PSNR difference "
        f"(\"{SCHEDULE}\" − \"{CACHING}\", ± SE); positive = fewer steps better.", "",
        "| model | configuration | budget | schedule RMS (best) | caching RMS | predicted | ΔPSNR (fewer steps − caching) "
        "| measured | right |", "|---|---|---|---|---|---|---|---|---|", *rows, "",
        f"Right in {right} of {total} cells."])
    (root / "choose_check.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
