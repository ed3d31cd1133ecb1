"""Smoke tests of the benchmark and demo entry points (bench/): tiny sizes, so CI exercises the code paths.
The real numbers come from `scripts/bench_quality.sh` and `scripts/demo.sh`, never from here."""
from __future__ import annotations

import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_weights(host, tmp_path_factory):
    """The committed demo weights, or (before they exist) random weights of the same architecture."""
    w = REPO / "demo_model" / "weights" / "sencache_demo_wan.safetensors"
    if w.exists():
        return w
    import json as _json
    from demo_model import train
    path = tmp_path_factory.mktemp("w") / "sencache_demo_wan.safetensors"
    model = train.build_model(0)
    sd = {k: v for k, v in model.state_dict().items()}
    for k, v in sd.items():                       # the zero head would make every output 0: randomise it
        if k.startswith("head.head."):
            v.normal_(0, 0.02)
    train.save_weights(sd, {"steps": "0", "loss": "nan", "config": _json.dumps(train.CONFIG)}, path)
    return path


def test_quality_bench_smoke(host, demo_weights, tmp_path):
    from bench import quality
    out = tmp_path / "q"
    quality.main(["--config", "wan_template", "--steps", "6", "--samples", "2", "--calibration-samples", "1",
                  "--timing-samples", "1", "--fractions", "0.5", "--no-vgg", "--weights", str(demo_weights),
                  "--out", str(out), "--methods", "sc_out", "ec_copy", "ec_asis", "tea", "mag", "fix_out", "every_k",
                  "steps_shift", "fix_ox", "plan"])
    md = (out / "wan_template.md").read_text()
    assert "| SenCache (output_extrapolated) |" in md and "| SenCache (output) |" in md and "Fewer steps (shift tuned)" in md and "Budget 3 of 6" in md
    assert (out / "wan_template.png").stat().st_size > 1000
    data = json.loads((out / "wan_template.json").read_text())
    for r in data["results"]:
        assert r["reference"]["evaluations"] == 6
        for name, per in r["methods"].items():
            o = per["3"]
            if o["matched"]:
                assert o["evaluations"] == 3, (name, o)       # exactly the budget
                assert -1 <= o["ssim"] <= 1     # SSIM lies in [-1, 1]
    # fixed interval and fewer steps always hit the budget exactly
    assert all(r["methods"]["Fixed interval (output)"]["3"]["matched"] for r in data["results"])
    assert all(r["methods"]["Fewer steps (shift tuned)"]["3"]["matched"] for r in data["results"])
    assert all(r["methods"]["Planned schedule"]["3"]["matched"] for r in data["results"])
    # with CFG, fixed interval + extrapolation is plain fixed-interval reuse (extrapolation only without CFG)
    for r in data["results"]:
        a, b = r["methods"]["Fixed interval + extrapolation"]["3"], r["methods"]["Fixed interval (output)"]["3"]
        assert a["psnr"] == b["psnr"]


def test_learned_bench_smoke(host, demo_weights, tmp_path):
    from bench import learned
    out = tmp_path / "l"
    learned.main(["--config", "wan_template", "--steps", "6", "--samples", "1", "--calibration-samples", "1",
                  "--fractions", "0.5", "--weights", str(demo_weights), "--out", str(out), "--ridges", "0.01"])
    md = (out / "wan_template.md").read_text()
    for row in ("| SenCache, Calibrator profile |", "| SenCache, learned profile (1 run, one extra pass per step) |",
                "| SenCache, learned profile (1 run, no extra pass) |", "Budget 3 of 6"):
        assert row in md, row
    data = json.loads((out / "wan_template.json").read_text())
    assert data["cost"]["SenCache, learned profile (1 run, no extra pass)"]["extra_evaluations"] == 0
    assert data["cost"]["SenCache, learned profile (1 run, one extra pass per step)"]["extra_evaluations"] == 2.5
    assert data["cost"]["SenCache, Calibrator profile"]["extra_evaluations"] == 2.5     # the same measurement
    for r in data["results"]:
        for name, per in r["methods"].items():
            if per["3"]["matched"]:
                assert per["3"]["evaluations"] == 3, name


def test_budget_search_and_k_rules():
    from bench.quality import match_budgets, budgets_for
    assert budgets_for(30) == [15, 10, 8] and budgets_for(50) == [25, 17, 13]
    # a monotone step function: evals = 30 - floor(10 * log10(p) + 40) clipped
    import math
    f = lambda p: (max(4, min(30, 30 - int(10 * math.log10(p) + 40))), None)
    found, pts = match_budgets(f, [15, 10, 8], {})
    assert set(found) == {15, 10, 8} and all(pts[p][0] == b for b, p in found.items())


def test_k_rules(host):
    from bench import methods as M
    assert [M.sencache_k(30, b) for b in (15, 10, 8)] == [2, 3, 4]
    assert [M.magcache_k(30, b) for b in (15, 10, 8)] == [2, 3, 5]


def test_demo_smoke(host, demo_weights, tmp_path):
    from bench import demo
    out = demo.main(["--out", str(tmp_path / "demo"), "--steps", "4", "--repeats", "1", "--calibrate-in-graph",
                     "--calibration-runs", "1", "--weights", str(demo_weights)])
    for f in ("report.md", "side_by_side.png", "uncached.gif", "sencache.gif", "uncached.webp", "trace.json"):
        assert (out / f).exists(), f
    rep = (out / "report.md").read_text()
    assert "PSNR" in rep and "SenCache computed" in rep
    # one speed-up definition: the measured figure once (against the uncached runs), the Visualizer's an estimate
    assert rep.count("measured speed-up") == 1 and "(CPU time, one run each vs an uncached run)" in rep
    assert "one repeat: the timing noise is unknown" in rep
    assert "estimated speed-up ≈" in rep
    # never above what skipping evaluations can save
    import re
    value = float(re.search(r"measured speed-up ([0-9.]+)×", rep).group(1))
    computed, total = map(int, re.search(r"SenCache computed \*\*(\d+) of (\d+)\*\*", rep).groups())
    assert value <= round(total / computed, 2), (value, computed, total)


def test_euler_every_other_step_is_euler_with_half_the_steps(host, demo_weights):
    """The benchmark can show it: euler reusing the output at every other step == euler with half the steps."""
    import torch
    from bench import common as C
    C.boot(weights=demo_weights)
    from bench import methods as M
    model = C.with_shift(C.load_model(demo_weights), 8.0)
    counter = C.EvalCounter(model)
    try:
        a = C.sample(M.apply_fixed(model, 4, "output", every_kth=True), "red circle on green", 3, 8, 6.0, "euler", "simple", counter)
        assert a.evaluations == 4
        b = C.sample(model, "red circle on green", 3, 4, 6.0, "euler", "simple", counter)
        assert b.evaluations == 4
    finally:
        counter.close()
    assert torch.allclose(a.latent, b.latent, atol=1e-4, rtol=0), float((a.latent - b.latent).abs().max())


def test_fixed_interval_extrapolation_replays_sencache(host, demo_weights):
    """Without CFG the benchmark's fixed-pattern extrapolation is the pack's output_extrapolated reuse: replaying the
    steps SenCache computed gives its output bit for bit; with the output reused as is it differs."""
    import torch
    from bench import common as C
    nodes, sc, _ = C.boot(weights=demo_weights)
    from bench import methods as M
    model = C.with_shift(C.load_model(demo_weights), 8.0)
    prof = sc.core.SensitivityProfile.load(REPO / "demo_model" / "weights" / "sencache_demo_wan_profile.safetensors")
    st = sc.runtime.SenCacheSettings(eps_start=0.0, eps_main=0.0, max_consecutive=3, target_speedup=2.0)
    cached, holder = sc.apply.apply_sencache(model, prof, st)
    a = C.sample(cached, "red circle on green", 3, 12, 1.0, "euler", "simple")
    pattern = {s.index for s in holder.last_trace.steps if not s.reuse}
    assert 0 < len(pattern) < 12
    b = C.sample(M.apply_fixed(model, len(pattern), "output_extrapolated", computed=pattern), "red circle on green", 3,
                 12, 1.0, "euler", "simple")
    c = C.sample(M.apply_fixed(model, len(pattern), "output", computed=pattern), "red circle on green", 3, 12, 1.0,
                 "euler", "simple")
    assert torch.equal(a.latent, b.latent)
    assert not torch.equal(b.latent, c.latent)


def test_wide_summary_is_what_the_committed_results_give(tmp_path):
    """results/wide/README.md (the published wide-benchmark tables and bars) is exactly what `python -m bench wide`
    makes from the committed per-model results, with every verdict drawn by the pack's current rule."""
    import shutil
    from bench import wide
    src = pathlib.Path(__file__).resolve().parent.parent / "results" / "wide"
    if not any(src.glob("*/*.json")):
        pytest.skip("no wide-benchmark results committed")
    work = tmp_path / "wide"
    shutil.copytree(src, work)
    wide.main(["--dir", str(work)])
    assert (work / "README.md").read_text() == (src / "README.md").read_text()
    facts = json.loads((work / "summary.json").read_text())
    assert facts["verdicts"] and all(v["how"] in ("right", "wrong", "none") for v in facts["verdicts"])
