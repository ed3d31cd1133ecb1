"""A compact markdown summary of quality-benchmark results (the tables in docs/RESULTS.md come from here).

    .dev/venv/bin/python -m bench summary results/quality/wan_template.json [more .json ...]

Per configuration: one row per method, one column per budget with PSNR (dB, mean ± SE over matched samples) and the
paired ΔPSNR against SenCache with the node's default reuse mode (output_extrapolated; files written before it became
the default, all with CFG 6 where it is identical to output reuse, compare against SenCache (output)); a Δ beyond two
standard errors is marked with * (better than SenCache, >0) or † (worse). Then one line per configuration: where that
SenCache row is beaten beyond 2 SE.
"""
from __future__ import annotations

import json
import sys

BASES = ("SenCache (output_extrapolated)", "SenCache (output)")
SHOW = ("SenCache (output_extrapolated)", "SenCache (output_extrapolated, K=6)", "SenCache (output)",
        "SenCache (output-input)", "EasyCache core (input copied)", "EasyCache core (as-is)",
        "LazyCache core", "TeaCache-style", "MagCache-style", "Fixed interval (output)", "Fixed interval + extrapolation",
        "Fewer steps (shift 8)", "Fewer steps (same shift)", "Fewer steps (shift tuned)", "Planned schedule",
        "Planned schedule (profile only)")


def _cell(row, base: bool) -> str:
    m, se = row["psnr"][0], row["psnr"][1]
    if m is None:
        return "–"
    out = f"{m:.1f} ± {float(se):.1f}" if base else f"{m:.1f}"
    d = row["vs_baseline"]["psnr"]
    if not base and d[0] is not None and d[2] > 1:
        mark = ("*" if d[0] > 0 else "†") if abs(d[0]) > 2 * float(d[1]) else ""
        out += f" ({d[0]:+.1f} ± {float(d[1]):.1f}{mark})"
    if row["matched"] < row["n"]:
        out += f" [{row['matched']}/{row['n']}]"
    return out


def summarise(path: str) -> tuple[str, list[str]]:
    d = json.load(open(path))
    cfg, budgets, table, N = d["config"], d["budgets"], d["table"], d["config"]["steps"]
    w = d["info"]["weights"]
    head = (f"**{path.rsplit('/', 1)[-1][:-5]}**: {cfg['sampler']}, {cfg['scheduler']}, {N} steps, CFG {cfg['cfg']:g}, "
            f"shift {cfg['shift']:g}; {d['info']['n_samples']} samples; demo model step {w.get('training_steps')}")
    lines = [head, "", "| method | " + " | ".join(f"{b} of {N} evals" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    losses = []
    base = next(b for b in BASES if b in table[str(budgets[0])])
    for m in SHOW:
        if m not in table[str(budgets[0])]:
            continue
        lines.append(f"| {m} | " + " | ".join(_cell(table[str(b)][m], m == base) for b in budgets) + " |")
        for b in budgets:
            r = table[str(b)][m]
            dm, dse = r["vs_baseline"]["psnr"][0], r["vs_baseline"]["psnr"][1]
            if m != base and dm is not None and dse not in (None, "nan") and dm > 2 * float(dse):
                losses.append(f"{m} at {b}/{N} ({dm:+.1f} ± {float(dse):.1f} dB)")
    return "\n".join(lines), losses, base


def main(argv=None):
    paths = (argv if argv is not None else sys.argv[1:]) or ["results/quality/wan_template.json"]
    for p in paths:
        text, losses, base = summarise(p)
        print(text)
        print()
        print(f"{base} is beaten beyond 2 SE by: " + ("; ".join(losses) if losses else "nothing") + ".")
        print()


if __name__ == "__main__":
    main()
