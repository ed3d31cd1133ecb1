"""The README's "Works with" table is exactly what devkit.compat_table makes from the compatibility suite's committed
results (results/compat/comfyui-<host>.json, which tests/test_compat.py checks against each run), one column per
host, every case of the suite a row."""
import json

from devkit import compat_table


def test_readme_table_is_made_from_the_suites_results():
    table = compat_table.readme_table(compat_table.README.read_text())
    assert table is not None, "README.md lacks the works-with table markers"
    assert table == compat_table.render(), "the README table is stale: run .dev/venv/bin/python -m devkit.compat_table"


def test_results_cover_both_hosts_and_every_case():
    from tests.test_compat import CASES
    runs = {json.loads(p.read_text())["comfyui"]: json.loads(p.read_text())
            for p in compat_table.RESULTS.glob("comfyui-*.json")}
    assert {"0.3.75", "0.18.1"} <= set(runs), sorted(runs)
    for host, r in runs.items():
        assert [row["id"] for row in r["rows"]] == [c.id for c in CASES], host
        expected = {c.id: c.expect for c in CASES}
        assert all(row["result"] == expected[row["id"]] for row in r["rows"]), (host, r["rows"])
