"""SenCache Visualizer, the "sencache.trace" UI event and the Calibrator's profile preview, in library mode
(real ComfyUI host, tiny Wan checkpoint, real sampler)."""
from __future__ import annotations

import json
import math
import os
import re
import sys
import types

import numpy as np
import pytest
import torch

from devkit import sampling

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts")


@pytest.fixture(scope="module")
def m(sc):
    """The pack's modules as ComfyUI loaded them (conftest's `sc`); wan and conds come from conftest too."""
    return sc


@pytest.fixture(scope="module")
def profile(m, wan, conds):
    _, prof = m.calibrate.calibrate(wan, *conds, {"samples": sampling.wan_latent()}, 0, 8, 5.0, "euler", "simple", 2)
    return prof


@pytest.fixture(scope="module")
def sampled(m, wan, conds, profile):
    """A patched model after one sampling run with some reuse: (patched model, holder, latent)."""
    settings = m.runtime.SenCacheSettings(eps_start=0.5, eps_main=0.5, max_consecutive=2)
    model, holder = m.apply.apply_sencache(wan, profile, settings, node_id="7")
    out = sampling.sample(model, *conds, sampling.wan_latent(), seed=0, steps=8)
    assert holder.last_trace is not None
    return model, holder, {"samples": out}


def _save(img: torch.Tensor, name: str) -> None:
    from PIL import Image
    os.makedirs(ARTIFACTS, exist_ok=True)
    Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8)).save(os.path.join(ARTIFACTS, name))


def test_node_registered_with_tooltips(host):
    cls = host.NODE_CLASS_MAPPINGS["SenCacheVisualizer"]
    assert host.NODE_DISPLAY_NAME_MAPPINGS["SenCacheVisualizer"] == "SenCache Visualizer"
    assert cls.CATEGORY == "SenCache"
    info = cls.INPUT_TYPES()
    assert set(info["required"]) == {"model", "latent"} and set(info["optional"]) == {"profile"}
    assert info["optional"]["profile"][0] == "SENCACHE_PROFILE"
    for section in ("required", "optional"):
        for name, spec in info[section].items():
            assert spec[1].get("tooltip"), name
    assert tuple(cls.RETURN_TYPES) == ("IMAGE", "STRING")


def test_plot_and_summary_match_the_trace(host, m, sampled, profile):
    model, holder, latent = sampled
    trace = holder.last_trace
    assert trace.reused > 0 and trace.computed > 0, "the fixture run should both compute and reuse"
    out = host.NODE_CLASS_MAPPINGS["SenCacheVisualizer"].execute(model=model, latent=latent)
    img, text = out.args
    _save(img, "visualizer_library.png")

    assert img.dtype == torch.float32 and img.ndim == 4 and img.shape[0] == 1 and img.shape[3] == 3
    assert img.shape[1] >= 600 and img.shape[2] >= 800
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0 and float(img.std()) > 0.05
    # the computed (blue) and reused (green) colours are both drawn
    px = (img[0].numpy() * 255).round().astype(int)
    for hex_color in (m.plotting.COMPUTED_COLOR, m.plotting.REUSED_COLOR):
        rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(px - rgb).sum(-1) <= 6).sum() > 200, hex_color

    n = len(trace.steps)
    assert f"computed {trace.computed}/{n} model evaluations, reused {trace.reused}" in text
    assert "SenCache node 7" in text and "Estimated speed-up" in text and "measured speed-up" not in text.lower()
    expect = (trace.wall_seconds + trace.reused * trace.model_seconds / trace.computed) / trace.wall_seconds
    assert m.plotting.speedup_estimate(trace) == pytest.approx(expect)
    assert float(re.search(r"Estimated speed-up ≈([0-9.]+)×", text).group(1)) == pytest.approx(expect, abs=0.006)
    assert float(re.search(r"run ([0-9.]+) s wall", text).group(1)) == pytest.approx(trace.wall_seconds, abs=6e-4)
    for reason in {s.reason for s in trace.steps}:
        count = sum(s.reason == reason for s in trace.steps)
        assert f"{reason} {count}" in text

    ui = out.ui if isinstance(out.ui, dict) else out.ui.as_dict()
    assert ui["text"] == [text]
    payload = ui["sencache_trace"][0]
    assert payload == m.plotting.compact(trace, "7")
    assert payload["node_id"] == "7" and payload["total"] == n and payload["computed"] == trace.computed
    assert [s["reuse"] for s in payload["steps"]] == [s.reuse for s in trace.steps]
    assert [s["S"] for s in payload["steps"]] == [s.score for s in trace.steps]
    json.dumps(payload, allow_nan=False)


def test_explicit_profile_input_and_profile_plot(host, m, sampled, profile):
    model, holder, latent = sampled
    img, _ = host.NODE_CLASS_MAPPINGS["SenCacheVisualizer"].execute(model=model, latent=latent, profile=profile).args
    assert img.shape[0] == 1 and img.shape[3] == 3
    arr = m.plotting.render_profile(profile)
    assert arr.dtype == np.float32 and arr.shape[2] == 3 and 0.0 <= arr.min() and arr.max() <= 1.0


def test_errors_are_clear(host, m, wan, profile):
    node = host.NODE_CLASS_MAPPINGS["SenCacheVisualizer"]
    latent = {"samples": sampling.wan_latent()}
    with pytest.raises(ValueError, match="no SenCache attached"):
        node.execute(model=wan, latent=latent)
    fresh, _ = m.apply.apply_sencache(wan, profile, m.runtime.SenCacheSettings(eps_start=0.1, eps_main=0.1, max_consecutive=2))
    with pytest.raises(ValueError, match="not been sampled yet"):
        node.execute(model=fresh, latent=latent)


def test_speedup_estimate_and_json_safety(m):
    RunTrace, StepRecord = m.core.RunTrace, m.core.StepRecord
    t = RunTrace(config={"eps_start": 0.1, "eps_main": 0.1, "max_consecutive": 3})
    for i, (reuse, score) in enumerate([(False, None), (True, 0.05), (True, float("inf")), (False, 0.3)]):
        t.steps.append(StepRecord(i, 1.0 - i / 4, reuse, "reuse" if reuse else "first", score, 0.1, None, None,
                                  model_seconds=0.0 if reuse else 0.25))
    t.finish()
    t.wall_seconds = 1.0
    assert m.plotting.speedup_estimate(t) == pytest.approx((1.0 + 2 * 0.25) / 1.0)
    c = m.plotting.compact(t, 3)
    assert c["node_id"] == "3" and c["speedup"] == pytest.approx(1.5) and c["steps"][2]["S"] is None
    json.dumps(c, allow_nan=False)
    assert m.plotting.speedup_estimate(RunTrace()) is None
    img = m.plotting.render_run(t, None)      # no profile, an infinite score: still draws
    assert img.shape[2] == 3


def test_one_speed_up_definition_everywhere(m, sampled, profile):
    """Log line, Visualizer summary and title, and the UI event carry the same figure, labelled an estimate; only a
    comparison with a timed uncached run is labelled measured."""
    import importlib
    speedup = importlib.import_module(m.plotting.__name__.rsplit(".", 1)[0] + ".speedup")
    _, holder, _ = sampled
    trace = holder.last_trace
    est = speedup.of_trace(trace)
    assert est.kind == speedup.ESTIMATED and est.value > 1.0
    label = est.text()
    assert label.startswith("estimated speed-up ≈") and "measured" not in label
    assert label in m.plotting.summary_line(trace)
    assert label.capitalize() in m.plotting.summary(trace, profile)
    c = m.plotting.compact(trace, "7")
    assert c["speedup_text"] == label and c["speedup_kind"] == "estimated" and c["speedup"] == pytest.approx(est.value)
    assert speedup.measured(3.0, 2.0).text() == "measured speed-up 1.50× (wall-clock vs an uncached run)"
    assert speedup.measured(3.0, 0.0).value is None and speedup.estimated(None, 0.0, 0, 0).value is None


def test_measured_speed_up_of_repeats_is_capped_and_says_when_noise_wins(m):
    """The demo's measured figure (median times of alternating repeats): never above the evaluation ratio, and the
    label says when the timing noise is larger than the difference."""
    import importlib
    speedup = importlib.import_module(m.plotting.__name__.rsplit(".", 1)[0] + ".speedup")
    # clear case: medians 2.11 s and 1.20 s, spreads of 0.01 s
    clear = speedup.measured_repeats([2.10, 2.12, 2.11], [1.20, 1.21, 1.19], evaluation_ratio=2.0)
    assert clear.kind == speedup.MEASURED and clear.value == pytest.approx(2.11 / 1.20) and clear.note == ""
    assert clear.text() == "measured speed-up 1.76× (median CPU time of 3 alternating repeats vs an uncached run)"
    # a shared machine's burst: the times say 2.5× for a run that computed half of the evaluations
    capped = speedup.measured_repeats([2.4, 2.5, 2.6], [1.0, 1.0, 1.05], evaluation_ratio=2.0)
    assert capped.value == 2.0 and "capped at the evaluation ratio 2.00×" in capped.text()
    assert "the times gave 2.50×" in capped.note and "timing noise" not in capped.note
    # noise larger than the difference: said, and the figure stays below the evaluation ratio
    noisy = speedup.measured_repeats([2.0, 3.0, 2.2], [2.1, 1.9, 2.6], evaluation_ratio=2.0)
    assert noisy.value == pytest.approx(2.2 / 2.1)
    assert "timing noise (±0.50 s) is larger than the difference (+0.10 s)" in noisy.text()
    assert "do not tell the two apart" in noisy.text() and "capped" not in noisy.text()
    # one repeat: no noise estimate, said so; nothing to time: no figure
    one = speedup.measured_repeats([2.0], [1.5], evaluation_ratio=3.0)
    assert one.value == pytest.approx(2.0 / 1.5) and "one repeat: the timing noise is unknown" in one.text()
    assert speedup.measured_repeats([], [], 2.0).value is None
    assert speedup.measured_repeats([2.0, 2.1], [0.0, 1.0], 2.0).value is None


def test_a_run_that_reuses_nothing_says_why(m, wan, conds, profile):
    """10 steps where ε sits below every predicted change: 10/10 computed, and the log line, summary and UI event
    say why and what to change."""
    settings = m.runtime.SenCacheSettings(eps_start=1e-6, eps_main=1e-6, max_consecutive=3)
    model, holder = m.apply.apply_sencache(wan, profile, settings, node_id="9")
    sampling.sample(model, *conds, sampling.wan_latent(), seed=0, steps=10)
    trace = holder.last_trace
    assert trace.computed == 10 and trace.reused == 0
    why = m.plotting.no_reuse_reason(trace)
    assert "S stayed above ε" in why and "raise eps_main" in why
    assert "nothing reused: " + why in m.plotting.summary_line(trace)
    assert why in m.plotting.summary(trace) and m.plotting.compact(trace, "9")["no_reuse_reason"] == why
    # a run that reused something has no reason
    settings = m.runtime.SenCacheSettings(eps_start=0.5, eps_main=0.5, max_consecutive=2)
    model, holder = m.apply.apply_sencache(wan, profile, settings)
    sampling.sample(model, *conds, sampling.wan_latent(), seed=0, steps=10)
    assert holder.last_trace.reused > 0 and m.plotting.no_reuse_reason(holder.last_trace) is None


def test_trace_event_sent_per_run_and_noop_without_server(host, m, wan, conds, profile, monkeypatch):
    ev = m.ui_events
    # the SenCache node builds its holder with the UI publishers, explicitly (no global registry)
    node = host.NODE_CLASS_MAPPINGS["SenCacheApply"]
    patched = node.execute(model=wan, profile=profile, eps_main=0.5, eps_start=0.5, eps_switch_percent=0.2,
                           max_consecutive_reuse=2, reuse_start_percent=0.0, reuse_end_percent=1.0,
                           protect_final_step=True, use_high_percentile=False, reuse_mode="output").args[0]
    assert m.runtime.find_holder(patched).publishers == list(ev.NODE_PUBLISHERS)
    assert not hasattr(m.runtime, "DEFAULT_LISTENERS")

    settings = m.runtime.SenCacheSettings(eps_start=0.5, eps_main=0.5, max_consecutive=2)
    model, holder = m.apply.apply_sencache(wan, profile, settings, node_id="12", publishers=ev.NODE_PUBLISHERS)
    assert ev.send_trace_event in holder.publishers
    # library mode: no PromptServer instance -> nothing sent, sampling unaffected
    server_mod = sys.modules.get("server")
    if server_mod is not None and hasattr(server_mod, "PromptServer"):
        monkeypatch.delattr(server_mod.PromptServer, "instance", raising=False)
    sampling.sample(model, *conds, sampling.wan_latent(), seed=1, steps=6)
    assert ev.prompt_server() is None

    sent = []

    class FakeServer:
        client_id = "client-abc"
        last_prompt_id = "prompt-1"

        def send_sync(self, event, data, sid=None):
            sent.append((event, json.loads(json.dumps(data, allow_nan=False)), sid))

    fake = types.ModuleType("server")
    fake.PromptServer = type("PromptServer", (), {"instance": FakeServer()})
    monkeypatch.setitem(sys.modules, "server", fake)
    sampling.sample(model, *conds, sampling.wan_latent(), seed=1, steps=6)
    assert len(sent) == 1
    event, data, sid = sent[0]
    assert event == "sencache.trace" and sid == "client-abc" and data["prompt_id"] == "prompt-1"
    expect = m.plotting.compact(holder.last_trace, "12")
    assert {k: v for k, v in data.items() if k != "prompt_id"} == expect
    assert data["total"] == 6 and len(data["steps"]) == 6
    assert set(data["steps"][0]) == {"sigma", "reuse", "S", "eps", "reason"}


def test_calibrator_shows_profile_plot(host, m, wan, conds):
    import folder_paths
    node = host.NODE_CLASS_MAPPINGS["SenCacheCalibrator"]
    out = node.execute(model=wan, positive=conds[0], negative=conds[1], latent_image={"samples": sampling.wan_latent()},
                       seed=0, steps=4, cfg=5.0, sampler_name="euler", scheduler="simple", runs=1, denoise=1.0, save_as="")
    ui = out.ui if isinstance(out.ui, dict) else out.ui.as_dict()
    assert ui["text"] and len(ui["images"]) == 1
    entry = ui["images"][0]
    assert entry["type"] == "temp" and entry["subfolder"] == ""
    path = os.path.join(folder_paths.get_temp_directory(), entry["filename"])
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    os.makedirs(ARTIFACTS, exist_ok=True)
    import shutil
    shutil.copy(path, os.path.join(ARTIFACTS, "calibrator_profile.png"))


def test_clone_with_lora_patch_keeps_the_holder_and_publishes(host, m, wan, conds, profile, monkeypatch):
    """Clones of the SenCache MODEL (LoRA-style weight patch, another clone after it) share the one holder: the run
    reaches the Visualizer of the SenCache node's MODEL and the UI publisher. The holder is an attachment bound
    into the wrappers, not a model_options entry, so a host's clone() semantics for model_options do not matter."""
    import copy
    got = []
    settings = m.runtime.SenCacheSettings(eps_start=0.5, eps_main=0.5, max_consecutive=2)
    model, holder = m.apply.apply_sencache(wan, profile, settings, node_id="3",
                                           publishers=[lambda h, t: got.append((h, t)), *m.ui_events.NODE_PUBLISHERS])
    assert m.runtime.KEY not in model.model_options.get("transformer_options", {})
    lora = model.clone()
    key = next(k for k in lora.model_state_dict() if k.endswith(".weight") and "blocks.0." in k)
    w = lora.model_state_dict()[key]
    lora.add_patches({key: (torch.full_like(w, 0.05),)}, 1.0)       # a "diff" patch, as LoRA loaders add
    later = lora.clone()
    later.model_options = copy.deepcopy(later.model_options)       # whatever a host's clone does to model_options
    assert m.runtime.find_holder(later) is holder

    sent = []
    fake = types.ModuleType("server")
    fake.PromptServer = type("PromptServer", (), {"instance": types.SimpleNamespace(
        client_id=None, last_prompt_id="p", send_sync=lambda e, d, sid=None: sent.append((e, d)))})
    monkeypatch.setitem(sys.modules, "server", fake)
    out = sampling.sample(later, *conds, sampling.wan_latent(), seed=4, steps=6)
    plain = sampling.sample(model, *conds, sampling.wan_latent(), seed=4, steps=6)
    assert not torch.equal(out, plain)                  # the weight patch took effect
    assert len(got) == 2 and got[0][0] is holder and len(sent) == 2 and sent[0][0] == "sencache.trace"
    assert sent[0][1]["node_id"] == "3" and sent[0][1]["total"] == 6
    # the Visualizer of the SenCache node's own MODEL shows the last run
    vis = host.NODE_CLASS_MAPPINGS["SenCacheVisualizer"].execute(model=model, latent={"samples": plain})
    assert vis.args[0].shape[0] == 1 and holder.last_trace is got[-1][1]
