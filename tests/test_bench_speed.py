"""The speed benchmark (`python -m bench speed`) at reduced size on the CPU: it runs end to end through the real
ComfyUI sampler and its report is internally consistent. Honest checks only: counts, presence and signs of the
measured numbers; no timing thresholds (this machine's CPUs are shared)."""
from __future__ import annotations

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "bench", "speed", "--size", "reduced", "--device", "cpu",
                           "--out", str(out), "--tmpdir", str(out), "--time-limit", "900"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    jsons = list(out.glob("*-reduced.json"))
    assert len(jsons) == 1, list(out.iterdir())
    md = jsons[0].with_suffix(".md")
    assert md.exists()
    assert not list(out.glob("sencache_bench_*")), "temporary checkpoint folder left behind"
    return json.loads(jsons[0].read_text()), md.read_text(), jsons[0].name


def rows(doc, method):
    return [r for r in doc["rows"] if r["method"] == method]


def test_files_name_the_device_and_versions(report):
    doc, md, name = report
    assert doc["complete"] and doc["device_type"] == "cpu"
    assert doc["device"] and name == re.sub(r"[^a-z0-9]+", "-", doc["device"].lower()).strip("-") + "-reduced.json"
    assert doc["device"] in md and doc["torch"] in md and doc["comfyui"] in md
    assert doc["config"]["steps"] == 30 and doc["config"]["cfg"] == 6.0 and doc["config"]["sampler"] == "uni_pc"


def test_budgets_are_met_and_counted(report):
    doc, md, _ = report
    (base,) = rows(doc, "uncached")
    assert base["computed"] == base["total"] == 30 and base["repeats"] >= 2
    for method in ("sencache", "easycache"):
        got = {r["target"]: r for r in rows(doc, method)}
        assert set(got) == {15, 10}, (method, got.keys())
        for target, r in got.items():
            assert abs(r["computed"] - target) <= 1, (method, target, r["computed"])
            assert r["total"] == 30
            assert r["eval_ratio"] == pytest.approx(30 / r["computed"])
            assert r["speedup"] > 0 and math.isfinite(r["speedup"])
            assert r["finite"]
            assert f"{r['computed']}/30" in md
    # every timed SenCache run's own trace agrees with the benchmark's independent evaluation counter
    for run in doc["runs"]:
        if run["method"] in ("sencache", "sencache_eps0") and "trace" in run:
            assert run["trace"]["computed"] == run["computed"] and run["trace"]["total"] == run["evaluations"]
        assert run["model_calls"] >= run["computed"]


def test_overhead_is_measured(report):
    doc, md, _ = report
    o = doc["overhead"]
    assert o["model_eval_s"] > 0
    assert math.isfinite(o["direct_ms_per_eval_median"]) and math.isfinite(o["direct_pct_of_model_eval"])
    assert len(o["wall_diff_ms_per_eval"]) >= 1 and all(math.isfinite(x) for x in o["wall_diff_ms_per_eval"])
    (eps0,) = rows(doc, "sencache_eps0")
    assert eps0["computed"] == 30              # ε = 0 never reuses: pure overhead
    for r in rows(doc, "sencache"):
        assert r["own_ms_reused"] is not None   # a reused evaluation's whole cost is measured
    assert "Overhead of SenCache" in md
