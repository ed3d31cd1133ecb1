"""Every workflow in example_workflows/ is loaded as the frontend saved it, turned into an API prompt
(devkit.workflow.to_api, widget values mapped by /object_info) and run on the real ComfyUI server (devkit.server)
with this pack, one server for the whole module.

The real model files cannot be used here (GBs, no model hub). What the test substitutes, and nothing else:
  1. Diffusion models: the workflow's file names are links to tiny random checkpoints built from ComfyUI's own
     classes (devkit.tiny_models), so UNETLoader detects them as the real families:
       wan2.1_t2v_1.3B_fp16 / wan2.2_t2v_{high,low}_noise_14B_fp8_scaled -> tiny Wan 2.1 T2V (both Wan 2.2 experts:
       the same tiny file), wan2.1_i2v_480p_14B_fp16 -> tiny Wan 2.1 I2V (36 input channels),
       sencache_demo_wan -> the real demo model of this repository (demo_model/weights; nothing substituted).
     LTX-Video: CheckpointLoaderSimple(ltx-video-2b-v0.9.5) -> UNETLoader(tiny LTXV); its VAE is not built
     (0.3.75's VAELoader/checkpoint loader build the full-size LTXV VAE from fixed configs), so the LTXV
     VAEDecode becomes SaveLatent and the nodes after it (CreateVideo, SaveVideo) are dropped.
  2. VAE: wan_2.1_vae.safetensors is a tiny *real* Wan 2.1 VAE (comfy.ldm.wan.vae.WanVAE with dim 8, random
     weights; ComfyUI detects the Wan 2.1 VAE from the state dict and reads its width from it), so VAEDecode,
     WanImageToVideo's encode, CreateVideo and SaveVideo (mp4) run for real.
  3. Text encoders: CLIPLoader is removed and each CLIPTextEncode becomes SenCacheDevRandomConditioning (seeded
     random [1, 4, 4096] context; with an attention mask for LTXV) — a UMT5/T5-XXL cannot be built small
     (fixed configs, billions of parameters).
  4. CLIP vision: CLIPVisionLoader/CLIPVisionEncode are removed and WanImageToVideo's optional
     clip_vision_output left unconnected (clip_vision_h has a fixed 630M-parameter config).
  5. Sizes: video latents are 64x64 pixels, 9 frames (EmptyHunyuanLatentVideo, WanImageToVideo,
     EmptyLTXVLatentVideo) instead of 832x480/768x512 and 33-97 frames; the demo workflow keeps its own size.
     Steps, samplers, schedulers, cfg, shifts and all SenCache settings are the workflow's own.
  6. Profiles: models/sencache/sensitivity_{wan21,ltx,cogvid}.npz are synthetic files in the reference format
     (METHOD.md §6; the real ones come from the paper's repository); the two Wan 2.2 expert profiles are copies
     of the profile the calibration workflow saved on the tiny Wan (that workflow runs first).
  7. Input image: input/example.png is a generated 64x64 picture.
  8. LTX-2 (built on ComfyUI 0.18.1, skipped on older hosts, which lack LTXAV): ltx-2-19b-dev-fp8 -> tiny LTXAV
     (devkit.tiny_ltxav); DualCLIPLoader and VAELoader are removed (a Gemma 3 12B and the LTX-2 VAE cannot be built
     small); the conditioning is 32 wide without an attention mask, as the tiny model's connectors take it;
     VAEDecode becomes SaveLatent. A second run adds an audio latent (SenCacheDevEmptyLTXVAudioLatent, since the
     audio VAE nodes need torchaudio) through core's LTXVConcatAVLatent / LTXVSeparateAVLatent.
The CogVideoX workflow targets a ComfyUI with native CogVideoX (upstream core; not 0.3.75 nor 0.18.1): it is validated against
/object_info (node types present, our nodes' values valid, the one missing piece named) and its run is skipped
with the reason, unless the host knows CLIPLoader type "cogvideox".
"""
from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from devkit import example_workflows
from devkit.workflow import FRONTEND_ONLY, MODE_NEVER, is_widget, input_specs, to_api

REPO = pathlib.Path(__file__).resolve().parent.parent
WF_DIR = REPO / "example_workflows"
NAMES = sorted(p.stem for p in WF_DIR.glob("*.json"))
DEMO_WEIGHTS = REPO / "demo_model" / "weights" / "sencache_demo_wan.safetensors"

MODEL_FILES = {   # workflow's file name -> tiny checkpoint (devkit.tiny_models) or a path
    "wan2.1_t2v_1.3B_fp16.safetensors": "tiny_wan21_t2v",
    "wan2.1_i2v_480p_14B_fp16.safetensors": "tiny_wan21_i2v",
    "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": "tiny_wan21_t2v",
    "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": "tiny_wan21_t2v",
    "ltx-video-2b-v0.9.5.safetensors": "tiny_ltxv",
    "sencache_demo_wan.safetensors": DEMO_WEIGHTS,
    "ltx-2-19b-dev-fp8.safetensors": "tiny_ltxav",          # hosts with LTXAV only (devkit.tiny_ltxav)
}
TINY = ("tiny_wan21_t2v", "tiny_wan21_i2v", "tiny_ltxv")
WAN_VAE = "wan_2.1_vae.safetensors"
NPZ = {"sensitivity_wan21.npz": 16 * 21 * 60 * 104, "sensitivity_ltx.npz": 128 * 21 * 16 * 24,
       "sensitivity_cogvid.npz": 14 * 16 * 60 * 90}
SMALL_VIDEO = {"EmptyHunyuanLatentVideo", "WanImageToVideo", "EmptyLTXVLatentVideo"}
FILE_INPUTS = {"unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name", "profile_name", "image"}
NEEDS_NEWER_HOST = {"sencache_cogvideox_t2v": ("CLIPLoader", "type", "cogvideox")}
NEEDS_HOST = {name: tuple(int(p) for p in example_workflows.built_on(name).split("."))
              for name in example_workflows.BUILT_ON}       # built from a newer host's nodes: skipped before it
LTX_NAMES = {"sencache_ltxv_t2v", "sencache_ltx2_t2v"}
RUN_LINE = re.compile(r"computed \d+/\d+ model evaluations")

BUILD_CODE = """
import sys, torch
from devkit import host, tiny_ltxav, tiny_models
host.boot(load_pack=False)
from safetensors.torch import save_file
from comfy.ldm.wan.vae import WanVAE
dm, vae_path = sys.argv[1], sys.argv[2]
for n in sys.argv[3:]:
    tiny_models.write_checkpoint(n, dm)
if tiny_ltxav.available():
    tiny_ltxav.write_checkpoint(dm)
with torch.device("meta"):
    m = WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True])
m = m.to_empty(device="cpu")
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for k, p in sorted(m.state_dict(keep_vars=True).items()):
        if "gamma" in k: p.fill_(1.0)
        elif p.ndim == 1: p.zero_()
        else: p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, vae_path)
"""


def load(name: str) -> dict:
    return json.loads((WF_DIR / f"{name}.json").read_text())


def write_reference_npz(path: pathlib.Path, d: int) -> None:
    t = np.linspace(999, 20, 50).round().astype(np.int64)
    np.savez(path, timesteps=t, J_x_norm=np.linspace(0.8, 1.4, 50), J_t_norm=np.full(50, np.sqrt(d) / 1000.0),
             sample_counts=np.full(50, 4))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from devkit.server import ComfyServer
    base = tmp_path_factory.mktemp("comfy_workflows")
    dm, vae_dir, inp, prof = (base / "models" / "diffusion_models", base / "models" / "vae", base / "input",
                              base / "models" / "sencache")
    for d in (dm, vae_dir, inp, prof):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", BUILD_CODE, str(dm), str(vae_dir / WAN_VAE), *TINY], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, target in MODEL_FILES.items():
        src = target if isinstance(target, pathlib.Path) else dm / f"{target}.safetensors"
        if src.exists():
            (dm / name).symlink_to(src)
    from PIL import Image
    yy, xx = np.mgrid[0:64, 0:64]
    Image.fromarray(np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)).save(inp / "example.png")
    for name, d in NPZ.items():
        write_reference_npz(prof / name, d)
    srv = ComfyServer(base, tiny=TINY)
    srv.start()                 # one intra-op thread (ComfyServer.start)
    print(f"\n[example workflows] models built and server up in {time.monotonic() - t0:.1f} s")
    srv.object_info = srv.get("/object_info")
    srv.version = srv.get("/system_stats")["system"]["comfyui_version"]
    srv.results = {}
    yield srv
    srv.stop()


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".")[:3])


def skip_unless_host_has(server, name: str) -> None:
    if name in NEEDS_HOST and version_tuple(server.version) < NEEDS_HOST[name]:
        pytest.skip(f"{name}: built on ComfyUI {example_workflows.built_on(name)} (its nodes/model class); this host "
                    f"is {server.version}")


# -- checks without running ------------------------------------------------------------------------------
def value_problems(prompt: dict, info: dict) -> list[tuple[str, str, object]]:
    """(node type, input, value) of widget values the host would refuse: unknown combo options, out of range.
    File-name combos are not checked (the files are the user's)."""
    bad = []
    for node in prompt.values():
        spec_by_name = {n: s for n, s, _ in input_specs(info[node["class_type"]])}
        for name, v in node["inputs"].items():
            spec = spec_by_name[name]
            if isinstance(v, list) or not is_widget(spec) or name in FILE_INPUTS:
                continue
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            options = spec[0] if isinstance(spec[0], list) else opts.get("options")
            if options is not None and v not in options:
                bad.append((node["class_type"], name, v))
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and (
                    v < opts.get("min", -float("inf")) or v > opts.get("max", float("inf"))):
                bad.append((node["class_type"], name, v))
    return bad


def test_every_workflow_has_a_thumbnail_and_notes():
    assert len(NAMES) >= 7, NAMES
    for name in NAMES:
        wf = load(name)
        assert (WF_DIR / f"{name}.jpg").stat().st_size > 5000, f"{name}.jpg missing or empty"
        assert wf["version"] == 0.4 and wf["last_node_id"] == max(n["id"] for n in wf["nodes"])
        notes = [n for n in wf["nodes"] if n["type"] in ("MarkdownNote", "Note")]
        assert notes and any("models/" in n["widgets_values"][0] for n in notes), f"{name}: no note on model files"
        assert any(n["type"].startswith("SenCache") for n in wf["nodes"]), name


def test_server_lists_the_templates_with_thumbnails(server):
    """ComfyUI's /workflow_templates lists the pack's example_workflows (Browse Templates), and serves the files."""
    from devkit.server import PACK_LINK
    listed = server.get("/workflow_templates")
    assert sorted(listed.get(PACK_LINK, [])) == NAMES, listed
    import urllib.request
    for name in NAMES:
        for ext in ("json", "jpg"):
            with urllib.request.urlopen(f"{server.url}/api/workflow_templates/{PACK_LINK}/{name}.{ext}", timeout=10) as r:
                assert r.status == 200 and len(r.read()) > 1000


def test_workflows_are_current(server):
    """The files are what devkit.example_workflows builds from /object_info of the ComfyUI each is built on
    (example_workflows.built_on): a node whose inputs changed makes this fail (regenerate with
    `python -m devkit.example_workflows` on that host). On another ComfyUI version only this pack's nodes are
    compared (core nodes may have gained inputs there); a workflow built on a newer host is skipped on older ones."""
    for name, (build, _) in example_workflows.WORKFLOWS.items():
        if name in NEEDS_HOST and version_tuple(server.version) < NEEDS_HOST[name]:
            continue
        built, saved = json.loads(json.dumps(build(server.object_info))), load(name)
        if server.version != example_workflows.built_on(name):
            built, saved = ([n for n in wf["nodes"] if n["type"].startswith("SenCache")] for wf in (built, saved))
        assert built == saved, f"{name}.json is stale: run .dev/venv/bin/python -m devkit.example_workflows"


@pytest.mark.parametrize("name", NAMES)
def test_workflow_validates_against_object_info(server, name):
    skip_unless_host_has(server, name)
    info = server.object_info
    wf = load(name)
    types = {n["type"] for n in wf["nodes"]} - FRONTEND_ONLY
    assert not types - set(info), f"{name}: node types unknown to this host: {sorted(types - set(info))}"
    prompt = to_api(wf, info, include_muted=True)
    problems = value_problems(prompt, info)
    expected = [NEEDS_NEWER_HOST[name]] if name in NEEDS_NEWER_HOST and not host_supports(info, name) else []
    assert problems == expected, f"{name}: widget values this host refuses: {problems}"
    ours = [n for n in prompt.values() if n["class_type"].startswith("SenCache")]
    assert ours and not [p for p in problems if p[0].startswith("SenCache")]


def host_supports(info, name) -> bool:
    node, inp, value = NEEDS_NEWER_HOST[name]
    spec = dict((n, s) for n, s, _ in input_specs(info[node]))[inp]
    options = spec[0] if isinstance(spec[0], list) else (spec[1] or {}).get("options", [])
    return value in options


# -- substitutions (see the module docstring) ------------------------------------------------------------
def adapt(prompt: dict, info: dict, name: str) -> dict:
    p = json.loads(json.dumps(prompt))
    ltx2 = name == "sencache_ltx2_t2v"
    drop = set()
    for nid, n in p.items():
        ct, ins = n["class_type"], n["inputs"]
        if ct in ("CLIPLoader", "DualCLIPLoader", "CLIPVisionLoader", "CLIPVisionEncode") or (ltx2 and ct == "VAELoader"):
            drop.add(nid)
        elif ct == "CLIPTextEncode":
            p[nid] = {"class_type": "SenCacheDevRandomConditioning",
                      "inputs": {"seed": int(nid), "tokens": 4, "width": 32 if ltx2 else 4096,
                                 "attention_mask": name == "sencache_ltxv_t2v"}}
        elif ct == "CheckpointLoaderSimple":
            p[nid] = {"class_type": "UNETLoader", "inputs": {"unet_name": ins["ckpt_name"], "weight_dtype": "default"}}
        elif ct in SMALL_VIDEO and name != "sencache_demo_model":
            ins.update(width=64, height=64, length=9)
    if name in LTX_NAMES:
        for nid, n in list(p.items()):
            if n["class_type"] == "VAEDecode":
                p[nid] = {"class_type": "SaveLatent", "inputs": {"samples": n["inputs"]["samples"],
                                                                   "filename_prefix": "latents/ltxv_test"}}
                drop |= downstream(p, nid)
    changed = True
    while changed:
        changed = False
        for nid, n in p.items():
            if nid in drop:
                continue
            optional = {k for k, _, opt in input_specs(info[n["class_type"]]) if opt}
            for k, v in list(n["inputs"].items()):
                if isinstance(v, list) and v[0] in drop:
                    assert k in optional, f"{name}: substitution left {n['class_type']}.{k} unconnected"
                    del n["inputs"][k]
    return {k: v for k, v in p.items() if k not in drop}


def downstream(p: dict, nid: str) -> set[str]:
    out, todo = set(), [nid]
    while todo:
        cur = todo.pop()
        for k, n in p.items():
            if k not in out and any(isinstance(v, list) and v[0] == cur for v in n["inputs"].values()):
                out.add(k)
                todo.append(k)
    return out


def run(server, prompt: dict, timeout: float = 300.0) -> tuple[dict, int]:
    before = len(RUN_LINE.findall(server.log_tail(10 ** 8)))
    entry = server.run(prompt, timeout=timeout)
    time.sleep(0.2)
    return entry, len(RUN_LINE.findall(server.log_tail(10 ** 8))) - before


def check_outputs(server, prompt: dict, entry: dict, name: str) -> None:
    info = server.object_info
    for nid, n in prompt.items():
        if info[n["class_type"]].get("output_node"):
            ui = entry["outputs"].get(nid)
            assert ui and any(ui.values()), f"{name}: output node {nid} ({n['class_type']}) produced nothing: {ui}"


def calibrated(server) -> str:
    """Run the calibration workflow (once per module); the name of the profile it saved."""
    if "calibrated" not in server.results:
        name = "sencache_calibrate_save_load_apply"
        prompt = adapt(to_api(load(name), server.object_info), server.object_info, name)
        entry, runs = run(server, prompt)
        check_outputs(server, prompt, entry, name)
        saved = [t for ui in entry["outputs"].values() for t in ui.get("text", []) if "saved models/sencache/" in t]
        assert saved, entry["outputs"]
        server.results["calibrated"] = (saved[0].split("models/sencache/")[1].strip(), runs)
    return server.results["calibrated"][0]


@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs(server, name):
    skip_unless_host_has(server, name)
    info = server.object_info
    t0 = time.monotonic()
    if name in NEEDS_NEWER_HOST and not host_supports(info, name):
        node, inp, value = NEEDS_NEWER_HOST[name]
        pytest.skip(f"{name}: needs {node} {inp}={value!r} (native CogVideoX: upstream core, not in 0.3.75 nor "
                    f"0.18.1); this host lacks it. Validated against /object_info only.")
    prof_dir = server.base / "models" / "sencache"
    if name == "sencache_calibrate_save_load_apply":
        saved = calibrated(server)
        assert server.results["calibrated"][1] >= 1, "SenCache ran no sampling run"
        # second half: the muted "later runs" group, unmuted, loads the saved profile
        wf = load(name)
        lp = [n for n in wf["nodes"] if n["type"] == "SenCacheLoadProfile"]
        assert len(lp) == 1 and lp[0]["mode"] == MODE_NEVER
        assert lp[0]["widgets_values"][0] == saved, "the Load Profile node names the file the Save node writes"
        for n in wf["nodes"]:
            n["mode"] = 0
        prompt = adapt(to_api(wf, info), info, name)
        entry, runs = run(server, prompt)
        assert runs >= 1
    else:
        if name == "sencache_wan22_a14b_t2v":
            src = prof_dir / calibrated(server)
            for n in load(name)["nodes"]:
                if n["type"] == "SenCacheLoadProfile" and not (prof_dir / n["widgets_values"][0]).exists():
                    shutil.copy(src, prof_dir / n["widgets_values"][0])
        prompt = adapt(to_api(load(name), info), info, name)
        entry, runs = run(server, prompt)
        n_sencache = sum(n["class_type"] == "SenCacheApply" for n in prompt.values())
        assert runs >= n_sencache, f"{name}: {runs} SenCache run lines for {n_sencache} SenCache nodes"
    check_outputs(server, prompt, entry, name)
    print(f"\n[example workflows] {name}: ran in {time.monotonic() - t0:.1f} s")


RUN_COUNTS = re.compile(r"computed (\d+)/(\d+) model evaluations")


def run_counts(server, prompt: dict) -> tuple[dict, list[tuple[int, int]]]:
    """Run a prompt; the (computed, total) of each SenCache run line it logged."""
    before = len(server.log_tail(10 ** 8))
    entry = server.run(prompt, timeout=300)
    time.sleep(0.2)
    return entry, [(int(a), int(b)) for a, b in RUN_COUNTS.findall(server.log_tail(10 ** 8)[before:])]


@pytest.mark.parametrize("audio", [False, True], ids=["video", "video_audio"])
def test_ltx2_calibrator_sencache_sampler_reuses_in_the_server(server, audio):
    """The LTX-2 graph Calibrator → SenCache → KSampler, through the HTTP API of the real server: it runs and
    SenCache reuses model evaluations; with audio, on a video + audio latent (core's LTXVConcatAVLatent, separated
    again by LTXVSeparateAVLatent), both parts come back with their shapes."""
    name = "sencache_ltx2_t2v"
    skip_unless_host_has(server, name)
    info = server.object_info
    p = adapt(to_api(load(name), info), info, name)
    for n in p.values():        # another seed than test_workflow_runs: ComfyUI would serve its cached outputs
        if n["class_type"] == "KSampler":
            n["inputs"]["seed"] += 1
    if audio:
        vid = next(k for k, n in p.items() if n["class_type"] == "EmptyLTXVLatentVideo")
        ks = next(k for k, n in p.items() if n["class_type"] == "KSampler")
        p["901"] = {"class_type": "SenCacheDevEmptyLTXVAudioLatent", "inputs": {"latent_frames": 5, "batch_size": 1}}
        p["902"] = {"class_type": "LTXVConcatAVLatent", "inputs": {"video_latent": [vid, 0], "audio_latent": ["901", 0]}}
        for n in p.values():
            for k, v in n["inputs"].items():
                if v == [vid, 0] and n["class_type"] != "LTXVConcatAVLatent":
                    n["inputs"][k] = ["902", 0]
        p["903"] = {"class_type": "LTXVSeparateAVLatent", "inputs": {"av_latent": [ks, 0]}}
        for nid, n in p.items():
            if n["class_type"] == "SaveLatent":
                n["inputs"]["samples"] = ["903", 0]
        p["904"] = {"class_type": "SaveLatent", "inputs": {"samples": ["903", 1], "filename_prefix": "latents/ltx2_audio"}}
    entry, counts = run_counts(server, p)
    check_outputs(server, p, entry, name)
    assert counts, "SenCache logged no run"
    computed, total = counts[-1]
    assert 0 < computed < total, f"SenCache reused nothing: {counts}"
    if audio:
        from safetensors import safe_open
        files = entry["outputs"]["904"]["latents"]
        path = server.base / "output" / files[0]["subfolder"] / files[0]["filename"]
        with safe_open(str(path), framework="pt") as f:
            assert f.get_tensor("latent_tensor").shape[1:] == (8, 5, 16)


# -- the real frontend loads each workflow and builds the same prompt ----------------------------------
ARTIFACTS = REPO / "test-artifacts"


def test_frontend_loads_workflows_and_builds_the_same_prompt(server):
    """ComfyUI's own frontend (1.32.9, headless Chromium) loads every workflow file; its graphToPrompt() must give
    exactly the prompt devkit.workflow.to_api gives (same nodes, inputs and values), so the converter the run
    tests rely on is the frontend's behaviour. One screenshot per workflow goes to test-artifacts/."""
    from devkit import browser
    if not browser.available():
        pytest.skip(f"Chromium not installed at {browser.CHROMIUM}: run scripts/setup_browser.sh")
    ARTIFACTS.mkdir(exist_ok=True)
    with browser.Chromium(server.url) as page:
        page.wait_for("!!(window.app && window.app.graph && window.LiteGraph && "
                      "LiteGraph.registered_node_types['SenCacheApply'])", timeout=120)
        for name in NAMES:
            if name in NEEDS_HOST and version_tuple(server.version) < NEEDS_HOST[name]:
                continue      # its nodes are unknown to this host's frontend
            wf = load(name)
            got = page.eval(f"""(async () => {{
                await app.loadGraphData({json.dumps(wf)}, true, true, {json.dumps(name)});
                const p = await app.graphToPrompt();
                return p.output; }})()""")
            want = to_api(wf, server.object_info)
            strip = lambda pr: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in pr.items()}
            assert strip(got) == strip(want), f"{name}: frontend prompt differs:\n{json.dumps(strip(got))[:3000]}"
            page.eval("(() => { app.canvas.ds.scale = 0.7; app.canvas.ds.offset = [30, 420]; "
                      "app.canvas.setDirty(true, true); app.canvas.draw(true, true); return true; })()")
            page.screenshot(ARTIFACTS / f"workflow_{name}.png")
