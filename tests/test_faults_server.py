"""Learn mode, the Calibrator and the profile store under faults, through the real ComfyUI server (devkit.server):
POST /interrupt during a learning run and a calibration, two server processes learning into one shared
models/sencache, a store on a full disk (a 4 KiB tmpfs in the server's own mount namespace) seen in the browser, and
an API prompt with a non-whole INT input."""
from __future__ import annotations

import json
import pathlib
import random
import shutil
import subprocess
import time

import pytest

from devkit import browser
from devkit.server import ComfyServer, ServerError

TINY = ("tiny_wan21_t2v",)
ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "test-artifacts"


def learn_prompt(seed: int, steps: int = 8, learning_runs=1, cfg: float = 5.0) -> dict:
    """UNETLoader → SenCache (no profile: learn mode) → KSampler → SenCache Visualizer → PreviewImage."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_wan21_t2v.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "SenCacheDevRandomConditioning", "inputs": {"seed": 1, "tokens": 4, "width": 4096, "attention_mask": False}},
        "3": {"class_type": "SenCacheDevRandomConditioning", "inputs": {"seed": 2, "tokens": 4, "width": 4096, "attention_mask": False}},
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9, "batch_size": 1}},
        "6": {"class_type": "SenCacheApply", "inputs": {
            "model": ["1", 0], "eps_main": 0.1, "eps_start": 0.02, "eps_switch_percent": 0.2, "max_consecutive_reuse": 3,
            "reuse_start_percent": 0.0, "reuse_end_percent": 1.0, "protect_final_step": True,
            "use_high_percentile": False, "reuse_mode": "output_extrapolated", "target_speedup": 2.0,
            "learning_runs": learning_runs}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["6", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "8": {"class_type": "SenCacheVisualizer", "inputs": {"model": ["6", 0], "latent": ["7", 0]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def calibrator_prompt(seed: int, steps: int = 8, save_as: str = "") -> dict:
    p = learn_prompt(0)
    for k in ("6", "7", "8", "9"):
        del p[k]
    p["5"] = {"class_type": "SenCacheCalibrator", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
        "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple", "runs": 1, "denoise": 1.0,
        "save_as": save_as}}
    p["10"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "latents/cal"}}
    return p


def learned(srv: ComfyServer) -> list[str]:
    d = srv.base / "models" / "sencache" / "learned"
    return sorted(p.name for p in d.glob("*.safetensors")) if d.is_dir() else []


def log_text(srv: ComfyServer) -> str:
    return srv.log_path.read_text(errors="replace")


def wait_for_log(srv: ComfyServer, text: str, after: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log_text(srv)[after:]:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged within {timeout:.0f} s:\n{srv.log_tail()}")
        time.sleep(0.02)


def start(base: pathlib.Path, **kw) -> ComfyServer:
    return ComfyServer(base, tiny=TINY, **kw).start()                 # one intra-op thread (ComfyServer.start)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start(tmp_path_factory.mktemp("faults_a"))
    yield srv
    srv.stop()


def clear_learned(srv: ComfyServer) -> None:
    d = srv.base / "models" / "sencache" / "learned"
    for p in d.glob("*.safetensors"):
        p.unlink()


# ---- interrupts ---------------------------------------------------------------------------------------------
def interrupt_during(srv: ComfyServer, prompt: dict, started: str, rng: random.Random, lo: float = 0.0,
                     hi: float = 0.4) -> dict:
    """Queue the prompt, wait until `started` is logged, wait a random moment (lo..hi s), POST /interrupt once; the
    history entry."""
    mark = len(log_text(srv))
    pid = srv.post_prompt(prompt)
    wait_for_log(srv, started, mark)
    time.sleep(rng.uniform(lo, hi))
    srv.post("/interrupt")
    return srv.wait(pid, timeout=600, fail=False)


def interrupted(entry: dict) -> bool:
    return any(m[0] == "execution_interrupted" for m in entry["status"].get("messages", []))


def test_one_interrupt_stops_a_learning_run_with_cfg(server):
    """Each single POST /interrupt stops the learning run (CFG 5: the measuring extra pass runs on the cond rows),
    and an interrupted learning run stores nothing. Interrupts land at random moments; with the extra pass
    swallowing them, about one in three was lost."""
    clear_learned(server)
    rng = random.Random(0)
    for i in range(8):
        entry = interrupt_during(server, learn_prompt(100 + i, steps=300), "learning the profile (run 1 of 1)", rng)
        assert interrupted(entry), (i, entry["status"])
        assert learned(server) == [], i
    assert "cond-rows-only extra pass failed" not in log_text(server)
    assert log_text(server).count("learning run interrupted; nothing saved") >= 8


def test_one_interrupt_stops_a_calibration(server):
    rng = random.Random(1)
    before = sorted(p.name for p in (server.base / "models" / "sencache").glob("*.safetensors"))
    for i in range(4):
        entry = interrupt_during(server, calibrator_prompt(200 + i, steps=300, save_as="interrupted_cal"),
                                 "got prompt", rng, 1.0, 2.0)      # (after the model has loaded)
        assert interrupted(entry), (i, entry["status"])
    assert sorted(p.name for p in (server.base / "models" / "sencache").glob("*.safetensors")) == before


# ---- input a node would silently truncate ------------------------------------------------------------------
@pytest.mark.parametrize("prompt, node, name, value", [(learn_prompt(300), "6", "learning_runs", 2.7),
                                                      (calibrator_prompt(300), "5", "steps", 8.5)])
def test_a_non_whole_int_input_is_refused_before_running(server, prompt, node, name, value):
    """ComfyUI turns an API prompt's INT value into int(value) before any node sees it (2.7 would run as 2): the
    pack's on_prompt handler makes ComfyUI refuse it instead, naming the node, the input and the value."""
    prompt[node]["inputs"][name] = value
    with pytest.raises(ServerError) as e:
        server.post_prompt(prompt)
    msg = str(e.value)
    assert "(400)" in msg and name in msg and "whole number" in msg and repr(value) in msg, msg


# ---- two servers, one store ---------------------------------------------------------------------------------
def test_two_servers_learning_into_one_store_keep_both_runs(server, tmp_path):
    """Two ComfyUI processes sharing models/sencache, learning_runs 2, a learning run each at the same time: the
    stored profile holds both runs (the second to finish re-reads the store under its lock and adds its run)."""
    clear_learned(server)
    base_b = tmp_path / "faults_b"
    (base_b / "models").mkdir(parents=True)
    (base_b / "models" / "sencache").symlink_to(server.base / "models" / "sencache", target_is_directory=True)
    other = start(base_b)
    try:
        marks = [len(log_text(s)) for s in (server, other)]
        pids = [s.post_prompt(learn_prompt(400 + i, steps=40, learning_runs=2)) for i, s in enumerate((server, other))]
        entries = [s.wait(pid, timeout=600) for s, pid in zip((server, other), pids)]
        logs = [log_text(s)[m:] for s, m in zip((server, other), marks)]
    finally:
        other.stop()
    assert all("learning the profile (run 1 of 2)" in t for t in logs), logs      # both began before either stored
    (name,) = learned(server)
    meta = json.loads(_metadata(server.base / "models" / "sencache" / "learned" / name)["sencache_profile"])
    assert meta["runs"] == 2 and [len(r) for r in meta["calibration_runs"]] == [39, 39]
    statuses = sorted(e["outputs"]["8"]["sencache_trace"][0]["status"] for e in entries)
    assert statuses[0].endswith("(run 1 of 2)") and statuses[1].endswith("(run 2 of 2); the next runs reuse evaluations")
    assert sum("another process stored 1 learning run of this model meanwhile" in t for t in logs) == 1


def _metadata(path: pathlib.Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), framework="np") as f:
        return f.metadata()


# ---- a full disk ----------------------------------------------------------------------------------------------
def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"], capture_output=True)
    return r.returncode == 0


FULL_DISK = ("mount -t tmpfs -o size=4k tmpfs \"$0\" && head -c 4096 /dev/zero > \"$0/filler\" && exec \"$@\"")


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -m` and tmpfs mounts (root or user namespaces)")
@pytest.mark.skipif(not browser.available(), reason=f"Chromium not installed at {browser.CHROMIUM}")
def test_a_full_disk_keeps_the_outputs_says_so_once_on_the_node_and_in_a_toast(tmp_path):
    """models/sencache/learned on a full 4 KiB tmpfs (in the server's own mount namespace): the learning run's
    prompt succeeds with its outputs, the node and a warning toast say what failed and where, once; the next run
    uses the profile kept in memory instead of learning again. The Calibrator's save_as there fails the same way:
    its outputs stay, a toast and a line above the node say so."""
    base = tmp_path / "faults_full"
    learned_dir = base / "models" / "sencache" / "learned"
    learned_dir.mkdir(parents=True)
    srv = start(base, wrap=["unshare", "-m", "sh", "-c", FULL_DISK, str(learned_dir)])
    try:
        with browser.Chromium(srv.url) as page:
            page.wait_for("!!(window.app && window.app.graph && window.comfyAPI?.api?.api?.clientId && "
                          "LiteGraph.registered_node_types['SenCacheApply'])", timeout=120)
            client = page.eval("window.comfyAPI.api.api.clientId")
            prompt = learn_prompt(500)
            page.eval(f"Promise.resolve(app.loadApiJson({json.dumps(prompt)}, 'faults.json')).then(() => true)")
            mark = len(log_text(srv))
            first = srv.run(prompt, timeout=600, client_id=client)
            trace = first["outputs"]["8"]["sencache_trace"][0]
            assert first["status"]["status_str"] == "success" and first["outputs"]["9"]["images"]
            assert "No space left on device" in trace["problem"] and str(learned_dir) in trace["problem"]
            assert trace["status"].startswith("learned the profile (run 1 of 1), kept in memory: not stored")
            page.wait_for("!!app.graph.getNodeById(6).sencacheTrace", timeout=60)
            assert page.eval("app.graph.getNodeById(6).sencacheTrace.problem") == trace["problem"]
            toast = page.wait_for("""[...document.querySelectorAll('.p-toast-message-warn')].map(e => e.innerText)
                                     .filter(t => t.includes('No space left on device')).join('\\n')""", timeout=30)
            assert "(#6)" in toast and "kept in memory" in toast, toast
            second = srv.run(learn_prompt(501), timeout=600, client_id=client)
            t2 = second["outputs"]["8"]["sencache_trace"][0]
            assert t2["status"].startswith("using the learned profile kept in memory") and t2["reused"] > 0
            assert t2["problem"] is None
            assert log_text(srv)[mark:].count("could not store it") == 1          # said once

            cal = calibrator_prompt(600, save_as="learned/cal")
            page.eval(f"Promise.resolve(app.loadApiJson({json.dumps(cal)}, 'faults_cal.json')).then(() => true)")
            entry = srv.run(cal, timeout=600, client_id=client)
            assert entry["status"]["status_str"] == "success" and entry["outputs"]["10"]["latents"]
            assert "NOT saved" in entry["outputs"]["5"]["text"][0]
            notice = page.wait_for("app.graph.getNodeById(5)?.sencacheNotice || ''", timeout=30)
            assert "No space left on device" in notice and str(learned_dir) in notice, notice
            toast = page.wait_for("""[...document.querySelectorAll('.p-toast-message-warn')].map(e => e.innerText)
                                     .filter(t => t.includes('could not be saved')).join('\\n')""", timeout=30)
            assert "(#5)" in toast, toast
            ARTIFACTS.mkdir(exist_ok=True)
            page.eval("""(() => { const n = app.graph.getNodeById(5), c = app.canvas; c.ds.scale = 1.0;
                c.ds.offset = [-n.pos[0] + 60, -n.pos[1] + 260]; c.setDirty(true, true); c.draw(true, true);
                return true; })()""")
            page.screenshot(ARTIFACTS / "ui_calibrator_save_failed.png")
    finally:
        srv.stop()
