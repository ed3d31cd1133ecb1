"""The README's "Works with" table, made from what the compatibility suite (tests/test_compat.py) observed.

The suite writes one results file per ComfyUI host (test-artifacts/compat/comfyui-<version>.json) and checks it
against the committed one in results/compat/; this module turns the committed files into the table between the
README's markers, and tests/test_compat_table.py checks that the README holds exactly that table.

    python -m devkit.compat_table                                      rewrite the README table from results/compat
    python -m devkit.compat_table --update-from test-artifacts/compat  take a suite run's files first
    python -m devkit.compat_table --check                              exit 1 if the README table is stale
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO / "results" / "compat"
README = REPO / "README.md"
BEGIN = "<!-- works-with table: made by devkit/compat_table.py from results/compat; do not edit by hand -->"
END = "<!-- end of the works-with table -->"

WORKS = "works"
STANDS_ASIDE = "SenCache stands aside"
FAILS_ALONE = "fails without SenCache too"
LEGEND = (f"**{WORKS}**: with SenCache in the chain, in learn mode and with a profile, the output at ε = 0 is "
          "bit-identical to the same graph without SenCache, and budget mode (2×) reuses evaluations. "
          f"**{STANDS_ASIDE}**: another step cache on the model; SenCache notices it when sampling starts, in either "
          "order of the nodes, computes every step itself (the result is the other cache's alone), learns nothing "
          "from the run and says so in the log, on the node and in a warning toast: keep one step cache. "
          f"**{FAILS_ALONE}**: the node's own error, the same with SenCache in the chain.")


def verdict(obs: dict) -> str:
    """The result of one case from its observations (tests/test_compat.py); a failed expectation names itself."""
    if "fails_without_sencache" in obs:
        alone, with_sc = obs["fails_without_sencache"], obs["fails_with_sencache"]
        if alone and with_sc == alone:
            return FAILS_ALONE
        return f"unexpected: without SenCache {alone!r}, with it {with_sc!r}"
    if "learning_run_computed_all" in obs:
        bad = [k for k in ("identical_learning_run", "identical_profile_eps0", "learned", "learning_run_computed_all")
               if not obs[k]]
        bad += [k for k in ("reused_learned", "reused_profile") if not obs[k][0] < obs[k][1]]
        bad += ["warning"] if obs["warning"] else []
        return WORKS if not bad else "does not work: " + ", ".join(bad)
    bad = [] if obs["other_cache_skipped_steps"] else ["the other cache skipped nothing"]
    bad += ["learned " + ", ".join(obs["learned"])] if obs["learned"] else []
    bad += [f"{run}: {k}" for run in ("learn_mode", "profile") for k, v in obs[run].items() if not v]
    return STANDS_ASIDE if not bad else "does not stand aside: " + "; ".join(bad)


def write_results(folder: pathlib.Path, version: str, rows: list[dict]) -> pathlib.Path:
    path = pathlib.Path(folder) / f"comfyui-{version}.json"
    path.write_text(json.dumps({"comfyui": version, "rows": rows}, indent=1, ensure_ascii=False) + "\n")
    return path


def _version_key(v: str):
    return tuple(int(p) for p in v.split("."))


def render(folder: pathlib.Path = RESULTS) -> str:
    """The table (markdown, with the markers and the legend) from every results file in `folder`."""
    runs = sorted((json.loads(p.read_text()) for p in pathlib.Path(folder).glob("comfyui-*.json")),
                  key=lambda r: _version_key(r["comfyui"]))
    hosts = [r["comfyui"] for r in runs]
    rows: dict = {}
    for r in runs:
        for row in r["rows"]:
            rows.setdefault(row["id"], dict(row, results={}))["results"][r["comfyui"]] = row["result"]
    lines = [BEGIN, "| node | pack (commit) | " + " | ".join(f"ComfyUI {h}" for h in hosts) + " | note |",
             "|---|---|" + "---|" * len(hosts) + "---|"]
    for row in rows.values():
        pack = row["pack"] + (f" ({row['commit']})" if row.get("commit") else "")
        cells = [row["results"].get(h, "not run") for h in hosts]
        node = f"`{row['node']}`" + (f" {row['where']}" if row.get("where") else "")
        lines.append(f"| {node} | {pack} | " + " | ".join(cells) + f" | {row.get('note', '')} |")
    return "\n".join(lines + ["", LEGEND, END])


def readme_table(text: str) -> str | None:
    """The table section of the README's text (markers included), or None without the markers."""
    if BEGIN not in text or END not in text:
        return None
    return text[text.index(BEGIN):text.index(END) + len(END)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--update-from", help="copy the results files of a suite run (comfyui-*.json) into results/compat")
    ap.add_argument("--check", action="store_true", help="only check that the README's table is current")
    a = ap.parse_args(argv)
    if a.update_from:
        RESULTS.mkdir(parents=True, exist_ok=True)
        for p in sorted(pathlib.Path(a.update_from).glob("comfyui-*.json")):
            shutil.copy(p, RESULTS / p.name)
            print(f"results/compat/{p.name} <- {p}")
    text = README.read_text()
    old, new = readme_table(text), render()
    if old is None:
        print(f"README.md has no table markers ({BEGIN} ... {END})", file=sys.stderr)
        return 1
    if a.check:
        print("README table is current" if old == new else "README table is stale: run python -m devkit.compat_table")
        return 0 if old == new else 1
    README.write_text(text.replace(old, new))
    print("README table written" if old != new else "README table was current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
