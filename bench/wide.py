"""The wide benchmark: every method on every model over a fixed configuration list, and what wins where.

    scripts/bench_wide.sh                 # runs bench.quality on WIDE_CONFIGS for every model, then this summary
    .dev/venv/bin/python -m bench.wide    # the summary only, from results/wide/<model>/<config>.json

For each model, configuration and budget it reports every method's PSNR against the uncached run (mean ± SE over the
test samples) and paired differences (± SE of the per-sample difference), and checks:
- Bar 1: the default (SenCache node, budget mode's threshold rule: the "SenCache (output_extrapolated)" row, its ε
  matched to the budget per sample) is never behind fixed interval (output reuse) or plain fewer steps at the same
  shift beyond 2 SE;
- Bar 2: the Calibrator's verdict (caching or fewer steps, made beforehand on its own runs: one prompt, one run per
  calibration seed) against the truth on the test samples (caching against the pack's schedule for fewer steps);
- Bar 3: the pack's schedule for fewer steps ("Planned schedule (calibrated)", chosen beforehand) is level with or
  ahead of fewer steps with the shift re-tuned on 4 calibration samples;
- Bar 4: the default's quality does not fall with more evaluations (1/2 ≥ 1/3 ≥ 1/4 within 2 SE);
- where caching on a re-tuned grid ("Fewer steps (shift tuned) + SenCache") wins.
"Behind" / "ahead" means beyond 2 SE of the paired difference; otherwise "level". PSNR against the uncached run
rewards matching that run, including its final step.
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
# recipe A (demo and two earlier checkpoints of its run), then recipes B and C (bench/common.MODELS); absent ones skip
MODELS = ("validation", "demo", "demo_step9139", "recipe_wide", "recipe_deep")
RECIPE = {"validation": "A", "demo": "A", "demo_step9139": "A", "recipe_wide": "B", "recipe_deep": "C"}
DEFAULT = "SenCache (output_extrapolated)"
SIMPLE = ("Fixed interval (output)", "Fewer steps (same shift)")
TUNED = "Fewer steps (shift tuned)"
SCHEDULE = "Planned schedule (calibrated)"
GRID = "Fewer steps (shift tuned) + SenCache"
CLEAR_DB = 1.0        # a true difference beyond this is one the verdict must get right


def load(model: str, config: str, root: pathlib.Path = OUT) -> dict | None:
    p = root / model / f"{config}.json"
    return json.loads(p.read_text()) if p.exists() else None


def psnrs(d: dict, method: str, B) -> list:
    """Per-sample PSNR (capped) or None where the method did not match the budget."""
    out = []
    for r in d["results"]:
        o = r["methods"].get(method, {}).get(str(B))
        out.append(min(float(o["psnr"]), PSNR_CAP) if o and o.get("matched") else None)   # "inf": identical
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


def truth(d: dict, B) -> tuple[float, float, int]:
    """Caching (the default) minus the pack's schedule for fewer steps on the test samples: mean, SE, n."""
    return paired(psnrs(d, DEFAULT, B), psnrs(d, SCHEDULE, B))


def calibrator_verdict(cal: dict, B) -> dict | None:
    """The Calibrator's verdict at budget B, drawn by the pack's current rule (sencache_core.tuning.verdict) from the
    tuning record the run stored (the rule is a pure function of that record)."""
    from sencache_core import tuning as T
    rec = cal.get("schedule_tuning")
    key = next((k for k, b in T.tune_steps(int((rec or {}).get("steps", 0))).items() if b == int(B)), None)
    return T.verdict(rec, key) if rec and key else None


def judge(verdict: dict | None, true_m: float) -> tuple[str, float]:
    """How the Calibrator's verdict fared: ("right" | "wrong" | "none", dB lost against the better option on the test
    samples; "none" keeps the default, caching)."""
    winner = (verdict or {}).get("winner")
    if winner is None:
        return "none", max(0.0, -true_m)
    right = (winner == "caching") == (true_m > 0)
    return ("right" if right else "wrong"), (0.0 if right else abs(true_m))


def summary(models=MODELS, configs=WIDE_CONFIGS, root: pathlib.Path = OUT) -> tuple[str, dict]:
    L = []
    facts = {"cells": 0, "default_behind": [], "schedule_behind": [], "schedule_cells": 0, "non_monotone": [],
             "verdicts": [], "grid_wins": [], "grid_cells": 0}
    for model in models:
        for config in configs:
            d = load(model, config, root)
            if d is None:
                if (root / model).is_dir():
                    L.append(f"### {model} · `{config}`: not run\n")
                continue
            c, n = d["config"], len(d["results"])
            w = d["info"]["weights"]
            cal = d["calibration"]
            L += [f"### {model} (recipe {RECIPE.get(model, '?')}) · `{config}`", "",
                  f"{c['sampler']}, {c['scheduler']}, {c['steps']} steps, CFG {c['cfg']:g}, shift {c['shift']:g}; "
                  f"{n} test samples; weights `{pathlib.Path(w['path']).name}` (training step {w['training_steps']}); "
                  f"re-tuned shift per step count {cal['best_shift']}.", ""]
            methods = [m for m in d["results"][0]["methods"]]
            L += ["| method | " + " | ".join(f"{B} of {c['steps']} evals" for B in d["budgets"]) + " |",
                  "|---|" + "---|" * len(d["budgets"])]
            for m in methods:
                cells = []
                for B in d["budgets"]:
                    mu, se, k = mean_se(psnrs(d, m, B))
                    cells.append(f"{mu:.2f} ± {se:.2f}" + (f" ({k}/{n})" if k < n else "") if k else "–")
                L.append(f"| {m} | " + " | ".join(cells) + " |")
            L += ["", "| budget | default vs fixed interval | default vs same-shift fewer steps | default vs tuned-shift "
                  "fewer steps | pack's schedule vs tuned-shift fewer steps | verdict (Calibrator, beforehand) | truth: "
                  "caching − pack's schedule (test samples) | grid + SenCache vs default |",
                  "|---|---|---|---|---|---|---|---|"]
            for B in d["budgets"]:
                facts["cells"] += 1
                base = psnrs(d, DEFAULT, B)
                row = [f"{B}/{c['steps']}"]
                for s in (*SIMPLE, TUNED):
                    mu, se, _ = paired(base, psnrs(d, s, B))
                    v = verdict(mu, se)
                    row.append(f"{mu:+.2f} ± {se:.2f} ({v})")
                    if v == "behind" and s in SIMPLE:
                        facts["default_behind"].append((model, config, B, s, round(mu, 2), round(se, 2)))
                if SCHEDULE in methods:
                    mu, se, _ = paired(psnrs(d, SCHEDULE, B), psnrs(d, TUNED, B))
                    v = verdict(mu, se)
                    facts["schedule_cells"] += 1
                    if v == "behind":
                        facts["schedule_behind"].append((model, config, B, round(mu, 2), round(se, 2)))
                    row.append(f"{mu:+.2f} ± {se:.2f} ({v})")
                    vd = calibrator_verdict(cal, B)
                    tm, tse, _ = truth(d, B)
                    how, lost = judge(vd, tm)
                    facts["verdicts"].append(dict(model=model, config=config, B=B, winner=(vd or {}).get("winner"),
                                                  said=(vd or {}).get("difference_db"), said_se=(vd or {}).get("se_db"),
                                                  truth=tm, truth_se=tse, how=how, lost=lost))
                    said = "–" if not vd else (f"{vd['winner'] or 'no clear winner'}" + (
                        f" ({vd['difference_db']:+.1f} ± {vd['se_db']:.1f} dB)" if vd.get("difference_db") is not None
                        else f" ({vd.get('reason')})"))
                    row += [said, f"{tm:+.2f} ± {tse:.2f} ({how}{f', {lost:.1f} dB lost' if lost else ''})"]
                else:
                    row += ["–", "–", "–"]
                if GRID in methods:
                    mu, se, _ = paired(psnrs(d, GRID, B), base)
                    facts["grid_cells"] += 1
                    if verdict(mu, se) == "ahead":
                        facts["grid_wins"].append((model, config, B, round(mu, 2), round(se, 2)))
                    row.append(f"{mu:+.2f} ± {se:.2f} ({verdict(mu, se)})")
                else:
                    row.append("–")
                L.append("| " + " | ".join(row) + " |")
            bs = sorted(d["budgets"], reverse=True)
            for hi, lo in zip(bs[:-1], bs[1:]):
                mu, se, _ = paired(psnrs(d, DEFAULT, hi), psnrs(d, DEFAULT, lo))
                if verdict(mu, se) == "behind":
                    facts["non_monotone"].append((model, config, hi, lo, round(mu, 2), round(se, 2)))
            L.append("")
    return "\n".join(L), facts


def verdict_table(facts: dict) -> list[str]:
    """Bar 2 in numbers: the verdicts against the truth, cells with a clear true difference apart."""
    vs = facts["verdicts"]
    clear = [v for v in vs if abs(v["truth"]) > CLEAR_DB]
    level = [v for v in vs if abs(v["truth"]) <= CLEAR_DB]
    count = lambda rows, how: sum(v["how"] == how for v in rows)
    worst = lambda rows, how: max([v["lost"] for v in rows if v["how"] == how], default=0.0)
    out = ["| cells | verdicts | right | wrong (most lost) | no verdict: default kept (most lost) |", "|---|---|---|---|---|"]
    for name, rows in ((f"true difference > {CLEAR_DB:g} dB", clear), (f"true difference ≤ {CLEAR_DB:g} dB", level)):
        out.append(f"| {name} | {len(rows)} | {count(rows, 'right')} | {count(rows, 'wrong')} "
                   f"({worst(rows, 'wrong'):.1f} dB) | {count(rows, 'none')} ({worst(rows, 'none'):.1f} dB) |")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--configs", nargs="*", default=list(WIDE_CONFIGS))
    ap.add_argument("--dir", default=str(OUT), help="where <model>/<config>.json are; README.md is written there")
    args = ap.parse_args(argv)
    root = pathlib.Path(args.dir)
    body, facts = summary(args.models, args.configs, root)
    nv = len(facts["verdicts"])
    head = ["# Wide benchmark: every method on every model", "",
            "Made by `scripts/bench_wide.sh` (bench.quality on each configuration and model, then `python -m "
            "bench.wide`). PSNR (dB) of the decoded frames against the same sample's uncached run, mean ± standard "
            "error over the test samples; every method at exactly the budget's evaluation count. Models: recipe A "
            "(validation, demo_step9139, demo: checkpoints of one training run; rules were chosen on these), recipes B "
            "(recipe_wide) and C (recipe_deep), trained differently (demo_model/README.md). Short names: "
            + ", ".join(f"{k} = {v}" for k, v in SHORT.items() if k in {DEFAULT, *SIMPLE, TUNED, SCHEDULE, GRID}) + ".",
            "", "Paired differences: ± SE of the per-sample difference; *behind* / *ahead* = beyond 2 SE, else *level*. "
            "The verdict is the Sensitivity Calibrator's (tune_schedule, 4 runs of one prompt, judged leave-one-out in "
            "latent dB); the truth is the default minus the pack's schedule for fewer steps on the test samples (PSNR).",
            "",
            f"**Bar 1** (the default is never behind fixed interval or same-shift fewer steps beyond 2 SE): "
            f"{'met' if not facts['default_behind'] else 'NOT met in ' + str(len(facts['default_behind'])) + ' comparisons'} "
            f"over {facts['cells']} configuration × budget cells.",
            f"**Bar 2** (the verdict): {nv} cells.", "", *verdict_table(facts), "",
            f"**Bar 3** (the pack's schedule, chosen beforehand, level with or ahead of a 4-sample shift re-tune): "
            f"behind in {len(facts['schedule_behind'])} of {facts['schedule_cells']} cells.",
            f"**Bar 4** (the default never worse with more evaluations, within 2 SE): "
            f"{'met' if not facts['non_monotone'] else 'NOT met in ' + str(len(facts['non_monotone'])) + ' pairs'}.",
            f"**Grid + SenCache** (M = 1.5 B steps on a re-tuned shift, cached down to B) ahead of the default in "
            f"{len(facts['grid_wins'])} of {facts['grid_cells']} cells.", ""]
    for title, key, fmt in (
            ("Where the default is behind (model, config, budget, baseline, Δ dB, SE):", "default_behind",
             lambda m, c, b, s, mu, se: f"- {m} · {c} · {b}: {s} by {-mu:.2f} ± {se:.2f}"),
            ("Where the pack's schedule is behind tuned-shift fewer steps:", "schedule_behind",
             lambda m, c, b, mu, se: f"- {m} · {c} · {b}: by {-mu:.2f} ± {se:.2f}"),
            ("Where more evaluations gave a worse default (higher budget, lower budget, Δ dB):", "non_monotone",
             lambda m, c, hi, lo, mu, se: f"- {m} · {c} · {hi} vs {lo}: {mu:+.2f} ± {se:.2f}"),
            ("Where grid + SenCache is ahead of the default:", "grid_wins",
             lambda m, c, b, mu, se: f"- {m} · {c} · {b}: by {mu:.2f} ± {se:.2f}")):
        if facts[key]:
            head += [title, ""] + [fmt(*r) for r in facts[key]] + [""]
    wrong = [v for v in facts["verdicts"] if v["how"] == "wrong" or (v["how"] == "none" and v["lost"] > CLEAR_DB)]
    if wrong:
        head += ["Verdicts that were wrong, or kept the default where it lost by more than 1 dB:", ""]
        head += [f"- {v['model']} · {v['config']} · {v['B']}: said {v['winner'] or 'no clear winner'}, truth "
                 f"{v['truth']:+.2f} ± {v['truth_se']:.2f} dB, lost {v['lost']:.1f} dB" for v in wrong] + [""]
    text = "\n".join(head) + "\n" + body
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(text + "\n")
    (root / "summary.json").write_text(json.dumps(facts, indent=1, default=str) + "\n")
    print(text)


if __name__ == "__main__":
    main()
