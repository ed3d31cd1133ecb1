"""The wide benchmark: every method on both models over a fixed configuration list, and what wins where.

    scripts/bench_wide.sh                 # runs bench.quality on WIDE_CONFIGS for both models, then this summary
    .dev/venv/bin/python -m bench.wide    # the summary only, from results/wide/<model>/<config>.json

For each model, configuration and budget it reports every method's PSNR against the uncached run (mean ± SE over the
test samples) and paired differences (± SE of the per-sample difference):
- the default (SenCache node, budget mode's threshold rule: the "SenCache (output_extrapolated)" row, its ε matched to
  the budget per sample) against fixed interval (output reuse) and plain fewer steps at the same shift;
- each of the pack's options against fewer steps with the shift re-tuned on calibration samples.
"Behind" / "ahead" means beyond 2 SE of the paired difference; otherwise "level". PSNR against the uncached run
rewards matching that run, including its final step: schedules anchored at its last σ profit from that.
Writes results/wide/README.md and prints it.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.quality import PSNR_CAP, SHORT, WIDE_CONFIGS  # noqa: E402

OUT = REPO / "results" / "wide"
MODELS = ("validation", "demo", "demo_step9139")   # the last: the former demo weights (results kept; skipped if absent)
DEFAULT = "SenCache (output_extrapolated)"
SIMPLE = ("Fixed interval (output)", "Fewer steps (same shift)")
TUNED = "Fewer steps (shift tuned)"
PACK_OPTIONS = ("SenCache (output_extrapolated)", "SenCache (optimal placement)", "Planned schedule",
                "Planned schedule (calibrated)", "Planned schedule + SenCache")


def load(model: str, config: str, root: pathlib.Path = OUT) -> dict | None:
    p = root / model / f"{config}.json"
    return json.loads(p.read_text()) if p.exists() else None


def psnrs(d: dict, method: str, B) -> list:
    """Per-sample PSNR (capped) or None where the method did not match the budget."""
    out = []
    for r in d["results"]:
        o = r["methods"].get(method, {}).get(str(B))
        out.append(min(o["psnr"], PSNR_CAP) if o and o.get("matched") else None)
    return out


def mean_se(v) -> tuple[float, float, int]:
    v = np.asarray([x for x in v if x is not None], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan"), int(v.size)


def paired(a, b) -> tuple[float, float, int]:
    return mean_se([x - y for x, y in zip(a, b) if x is not None and y is not None])


def verdict(m: float, se: float) -> str:
    if not (se == se) or m != m:
        return "n/a"
    return "ahead" if m > 2 * se else "behind" if m < -2 * se else "level"


def predictions(root: pathlib.Path) -> dict:
    """{(model, config, budget): "caching" | "fewer steps"} from the tables of bench.choose_check
    (root/choose_check*.md). Samplers that add noise get the default, caching (the Calibrator gives no verdict)."""
    from sencache_core.samplers import sampler_family
    from bench.quality import CONFIGS
    out = {}
    for f in sorted(root.glob("choose_check*.md")):
        for line in f.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 9 or not cells[1].startswith("`"):
                continue
            model, config, budget, pred = cells[0], cells[1].strip("`"), int(cells[2].split("/")[0]), cells[5]
            if sampler_family(CONFIGS.get(config, {}).get("sampler")) != "ode":
                pred = "caching"
            out[(model, config, budget)] = pred
    return out


def summary(models=MODELS, configs=WIDE_CONFIGS, root: pathlib.Path = OUT) -> tuple[str, dict]:
    L, facts = [], {"default_behind": [], "best_behind_tuned": [], "cells": 0, "chosen_behind_tuned": [],
                    "chosen_cells": 0}
    chosen_by = predictions(root)
    for model in models:
        for config in configs:
            d = load(model, config, root)
            if d is None:
                if (root / model).is_dir():
                    L.append(f"### {model} · `{config}`: not run\n")
                continue
            c, n = d["config"], len(d["results"])
            w = d["info"]["weights"]
            L += [f"### {model} · `{config}`", "",
                  f"{c['sampler']}, {c['scheduler']}, {c['steps']} steps, CFG {c['cfg']:g}, shift {c['shift']:g}; "
                  f"{n} test samples; weights `{pathlib.Path(w['path']).name}` (training step {w['training_steps']}); "
                  f"best re-tuned shift per budget {d['calibration']['best_shift']}.", ""]
            methods = [m for m in d["results"][0]["methods"]]
            head = "| method | " + " | ".join(f"{B} of {c['steps']} evals" for B in d["budgets"]) + " |"
            L += [head, "|---|" + "---|" * len(d["budgets"])]
            for m in methods:
                cells = []
                for B in d["budgets"]:
                    mu, se, k = mean_se(psnrs(d, m, B))
                    cells.append(f"{mu:.2f} ± {se:.2f}" + (f" ({k}/{n})" if k < n else "") if k else "–")
                L.append(f"| {m} | " + " | ".join(cells) + " |")
            L.append("")
            L.append("| budget | default vs fixed interval | default vs same-shift fewer steps | best pack option "
                     "(by mean) | its Δ vs tuned-shift fewer steps | planned (calibrated) vs tuned shift | "
                     "the Calibrator's choice | its Δ vs tuned-shift fewer steps |")
            L.append("|---|---|---|---|---|---|---|---|")
            for B in d["budgets"]:
                facts["cells"] += 1
                base = psnrs(d, DEFAULT, B)
                row = [f"{B}/{c['steps']}"]
                for s in SIMPLE:
                    mu, se, _ = paired(base, psnrs(d, s, B))
                    v = verdict(mu, se)
                    row.append(f"{mu:+.2f} ± {se:.2f} ({v})")
                    if v == "behind":
                        facts["default_behind"].append((model, config, B, s, round(mu, 2), round(se, 2)))
                opts = [o for o in PACK_OPTIONS if o in methods]
                best = max(opts, key=lambda o: mean_se(psnrs(d, o, B))[0])
                tuned = psnrs(d, TUNED, B)
                mu, se, _ = paired(psnrs(d, best, B), tuned)
                v = verdict(mu, se)
                if v == "behind":
                    facts["best_behind_tuned"].append((model, config, B, best, round(mu, 2), round(se, 2)))
                row += [best, f"{mu:+.2f} ± {se:.2f} ({v})"]
                if "Planned schedule (calibrated)" in methods:
                    mu, se, _ = paired(psnrs(d, "Planned schedule (calibrated)", B), tuned)
                    row.append(f"{mu:+.2f} ± {se:.2f} ({verdict(mu, se)})")
                else:
                    row.append("–")
                choice = chosen_by.get((model, config, B))
                if choice is None:
                    row += ["–", "–"]
                else:
                    m = "Planned schedule (calibrated)" if choice == "fewer steps" else DEFAULT
                    mu, se, _ = paired(psnrs(d, m, B), tuned)
                    v = verdict(mu, se)
                    facts["chosen_cells"] += 1
                    if v == "behind":
                        facts["chosen_behind_tuned"].append((model, config, B, m, round(mu, 2), round(se, 2)))
                    row += [choice, f"{mu:+.2f} ± {se:.2f} ({v})"]
                L.append("| " + " | ".join(row) + " |")
            L.append("")
    return "\n".join(L), facts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--configs", nargs="*", default=list(WIDE_CONFIGS))
    ap.add_argument("--dir", default=str(OUT), help="where <model>/<config>.json are; README.md is written there")
    args = ap.parse_args(argv)
    root = pathlib.Path(args.dir)
    body, facts = summary(args.models, args.configs, root)
    head = ["# Wide benchmark: every method on both models", "",
            "Made by `scripts/bench_wide.sh` (bench.quality on each configuration and model, then `python -m "
            "bench.wide`). PSNR (dB) of the decoded frames against the same sample's uncached run, mean ± standard "
            "error over the test samples; every method at exactly the budget's evaluation count. Short names: "
            + ", ".join(f"{k} = {v}" for k, v in SHORT.items() if k in set(PACK_OPTIONS) | set(SIMPLE) | {TUNED,
                "Fixed interval + extrapolation"}) + ".",
            "", "Paired differences: ± SE of the per-sample difference; *behind* / *ahead* = beyond 2 SE, else *level*. "
            "PSNR against the uncached run rewards matching that run, including its final step (the planned schedules "
            "keep its last σ).", "",
            f"**Bar 1** (the default is never behind fixed interval or same-shift fewer steps beyond 2 SE): "
            f"{'met' if not facts['default_behind'] else 'NOT met in ' + str(len(facts['default_behind'])) + ' comparisons'} "
            f"over {facts['cells']} configuration × budget cells.",
            f"**Bar 2** (the pack's best option is at least level with tuned-shift fewer steps): "
            f"{'met' if not facts['best_behind_tuned'] else 'NOT met in ' + str(len(facts['best_behind_tuned'])) + ' cells'} "
            "with the best option picked afterwards on the test samples (by mean); with the option the Calibrator's "
            "tuning picks beforehand (bench/choose_check.py; caching where the sampler adds noise): "
            + (f"behind in {len(facts['chosen_behind_tuned'])} of {facts['chosen_cells']} cells."
               if facts["chosen_cells"] else "not run."),
            ""]
    if facts["default_behind"]:
        head += ["Where the default is behind (model, config, budget, baseline, Δ dB, SE):", ""]
        head += [f"- {m} · {c} · {b}: {s} by {-mu:.2f} ± {se:.2f}" for m, c, b, s, mu, se in facts["default_behind"]]
        head.append("")
    if facts["chosen_behind_tuned"]:
        head += ["Where the Calibrator's choice is behind tuned-shift fewer steps:", ""]
        head += [f"- {m} · {c} · {b}: {o} by {-mu:.2f} ± {se:.2f}" for m, c, b, o, mu, se in facts["chosen_behind_tuned"]]
        head.append("")
    if facts["best_behind_tuned"]:
        head += ["Where the best pack option is behind tuned-shift fewer steps:", ""]
        head += [f"- {m} · {c} · {b}: {o} by {-mu:.2f} ± {se:.2f}" for m, c, b, o, mu, se in facts["best_behind_tuned"]]
        head.append("")
    text = "\n".join(head) + "\n" + body
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
