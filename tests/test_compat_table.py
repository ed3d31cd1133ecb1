"""The README's "Works with" table is exactly what devkit.compat_table makes from the compatibility suite's committed
results (results/compat/comfyui-<host>.json, which tests/test_compat.py checks against each of its runs), one column
per host, the same cases on both."""
import json

from devkit import compat_table


def test_readme_table_is_made_from_the_suites_results():
    table = compat_table.readme_table(compat_table.README.read_text())
    assert table is not None, "README.md lacks the works-with table markers"
    assert table == compat_table.render(), "the README table is stale: run .dev/venv/bin/python -m devkit.compat_table"


def test_results_cover_both_hosts_with_the_same_cases():
    runs = {json.loads(p.read_text())["comfyui"]: json.loads(p.read_text())
            for p in compat_table.RESULTS.glob("comfyui-*.json")}
    assert {"0.3.75", "0.18.1"} <= set(runs), sorted(runs)
    ids = {host: [row["id"] for row in r["rows"]] for host, r in runs.items()}
    assert len({tuple(v) for v in ids.values()}) == 1 and len(ids["0.3.75"]) >= 14, ids
    known = {compat_table.WORKS, compat_table.STANDS_ASIDE, compat_table.FAILS_ALONE}
    assert all(row["result"] in known for r in runs.values() for row in r["rows"])
