"""What Wan users stack with SenCache, through the real server (devkit.server) with the real other packs
(devkit.packs: ComfyUI-GGUF and ComfyUI-KJNodes, extracted by scripts/setup.sh; the cases that need them are skipped
without their archives, the ComfyUI core ones still run).

One server per host for every case. Each case is a small graph on the demo model (demo_model/weights, a tiny Wan 2.1
T2V): UNETLoader -> ModelSamplingSD3 -> [the case's nodes before SenCache] -> SenCache -> [the case's nodes after]
-> KSampler (uni_pc, 8 steps, cfg 6, a 64x64x5 latent) -> SaveLatent; the server runs with PyTorch's attention
(SERVER_ARGS says why). Protocols, by what the case should show:
  works         with SenCache in learn mode at ε = 0 (the learning run, first) and with the demo profile at ε = 0 the
                latent is bit-identical to the graph without SenCache; budget mode (2x) reuses evaluations with the
                profile learned by that learning run and with the demo profile.
  stands aside  another step cache: the graph with it and without SenCache is the reference; SenCache in learn
                mode and with the demo profile (budget mode, either order of the nodes) gives that latent bit for bit,
                computes every evaluation, says which node it stood aside for (log line and trace event) and stores
                no learned profile.
  fails alone   the node fails without SenCache too: the same error with SenCache in the chain, and no other.
Each case's observations give its result (devkit.compat_table.verdict) and a row of this host's results
(test-artifacts/compat/comfyui-<version>.json); the last test checks them against the committed
results/compat/comfyui-<version>.json, from which devkit.compat_table makes the README's "Works with" table.
A browser test checks the stacked-cache warning on the node and in the toast.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil
import time
import uuid

import pytest
import torch

from devkit import compat_table, packs

REPO = pathlib.Path(__file__).resolve().parent.parent
DEMO = REPO / "demo_model" / "weights" / "sencache_demo_wan.safetensors"
DEMO_PROFILE = REPO / "demo_model" / "weights" / "sencache_demo_wan_profile.safetensors"
GGUF_NAME = "sencache_demo_wan-Q8_0.gguf"
LORA_NAME = "sencache_demo_wan_test_lora.safetensors"
ARTIFACTS = REPO / "test-artifacts" / "compat"

PACKS_READY, PACKS_WHY = packs.available()
# PyTorch's attention, as GPU users get it: on the CPU, ComfyUI's default (sub-quadratic) attention reads the free
# memory inside the compiled graph, so torch.compile recompiles it on every call until dynamo's recompile limit and
# a compiled model's output then changes from run to run, with or without SenCache.
SERVER_ARGS = ("--use-pytorch-cross-attention",)
LATENT = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5, "batch_size": 1}}
PROMPT, NEGATIVE, LATENT_ID = "3", "4", "5"


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    node: str                    # the node the table names
    where: str                   # ... and how it is used
    pack: str | None             # devkit.packs name; None = ComfyUI core
    expect: str                  # compat_table.WORKS / STANDS_ASIDE / FAILS_ALONE
    before: tuple = ()           # (class_type, inputs without "model") applied before SenCache, in order
    after: tuple = ()            # ... after SenCache
    loader: dict | None = None   # instead of UNETLoader(demo model)
    note: str = ""


EASYCACHE = ("EasyCache", {"reuse_threshold": 0.5, "start_percent": 0.15, "end_percent": 0.95, "verbose": False})
LAZYCACHE = ("LazyCache", {"reuse_threshold": 2.0, "start_percent": 0.15, "end_percent": 0.95, "verbose": False})
SKIPPED = "it skipped steps of these runs on its own"
LORA = ("LoraLoaderModelOnly", {"lora_name": LORA_NAME, "strength_model": 1.0})
CASES = [
    Case("gguf_q8_0", "UnetLoaderGGUF", "Q8_0", "ComfyUI-GGUF", compat_table.WORKS,
         loader={"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": GGUF_NAME}},
         note="the demo model through the pack's tools/convert.py (F16) and fix_5d_tensors.py, requantized with gguf"),
    Case("lora_before", "LoraLoaderModelOnly", "before SenCache", None, compat_table.WORKS, before=(LORA,),
         note="lora_A/lora_B on four linear layers; learn mode keys its profile by the LoRA"),
    Case("lora_after", "LoraLoaderModelOnly", "after SenCache", None, compat_table.WORKS, after=(LORA,)),
    Case("compile_kj", "TorchCompileModelWanVideoV2", "", "ComfyUI-KJNodes", compat_table.WORKS,
         before=(("TorchCompileModelWanVideoV2", {"backend": "inductor", "fullgraph": False, "mode": "default",
                                                  "dynamic": False, "compile_transformer_blocks_only": True,
                                                  "dynamo_cache_size_limit": 64}),),
         note="inductor on the CPU (gcc), transformer blocks compiled"),
    Case("compile_core", "TorchCompileModel", "", None, compat_table.WORKS,
         before=(("TorchCompileModel", {"backend": "inductor"}),),
         note="inductor on the CPU (gcc), the whole model compiled. On 0.18.1 a compiled model keeps the graph of its first "
              "run: SenCache added later sees none of its calls and says so (restart ComfyUI)"),
    Case("nag", "WanVideoNAG", "", "ComfyUI-KJNodes", compat_table.WORKS,
         before=(("WanVideoNAG", {"conditioning": [NEGATIVE, 0], "nag_scale": 11.0, "nag_alpha": 0.25, "nag_tau": 2.5}),)),
    Case("slg", "SkipLayerGuidanceWanVideo", "", "ComfyUI-KJNodes", compat_table.FAILS_ALONE,
         before=(("SkipLayerGuidanceWanVideo", {"blocks": "1", "start_percent": 0.2, "end_percent": 1.0}),),
         note="its block patch needs the transformer_options that only the removed TeaCacheKJ passed"),
    Case("enhance", "WanVideoEnhanceAVideoKJ", "", "ComfyUI-KJNodes", compat_table.WORKS,
         before=(("WanVideoEnhanceAVideoKJ", {"latent": [LATENT_ID, 0], "weight": 2.0}),)),
    Case("riflex", "ApplyRifleXRoPE_WanVideo", "", "ComfyUI-KJNodes", compat_table.WORKS,
         before=(("ApplyRifleXRoPE_WanVideo", {"latent": [LATENT_ID, 0], "k": 6}),)),
    Case("teacache_kj", "WanVideoTeaCacheKJ", "", "ComfyUI-KJNodes", compat_table.WORKS,
         before=(("WanVideoTeaCacheKJ", {"rel_l1_thresh": 0.275, "start_percent": 0.1, "end_percent": 1.0,
                                         "cache_device": "offload_device", "coefficients": "1.3B"}),),
         note="deprecated at this commit: it returns the model unchanged (no cache to stand aside for)"),
    Case("easycache_before", "EasyCache", "before SenCache", None, compat_table.STANDS_ASIDE, before=(EASYCACHE,),
         note=SKIPPED),
    Case("easycache_after", "EasyCache", "after SenCache", None, compat_table.STANDS_ASIDE, after=(EASYCACHE,),
         note=SKIPPED),
    Case("lazycache_before", "LazyCache", "before SenCache", None, compat_table.STANDS_ASIDE, before=(LAZYCACHE,),
         note=SKIPPED),
    Case("lazycache_after", "LazyCache", "after SenCache", None, compat_table.STANDS_ASIDE, after=(LAZYCACHE,),
         note=SKIPPED),
]
OTHER_NAMES = {"EasyCache": "EasyCache (ComfyUI core)", "LazyCache": "LazyCache (ComfyUI core)"}


def write_lora(path: pathlib.Path) -> None:
    """A rank-4 LoRA for four linear layers of the demo model, in the diffusion-pipe / musubi-tuner key format
    (diffusion_model.<layer>.lora_A/lora_B.weight) that ComfyUI's loader maps for Wan."""
    from safetensors.torch import load_file, save_file
    sd = load_file(str(DEMO))
    g = torch.Generator().manual_seed(7)
    lora = {}
    for layer in ("blocks.0.self_attn.q", "blocks.1.cross_attn.k", "blocks.2.ffn.0", "blocks.3.self_attn.o"):
        out_f, in_f = sd[f"{layer}.weight"].shape
        lora[f"diffusion_model.{layer}.lora_A.weight"] = torch.randn(4, in_f, generator=g) * 0.2
        lora[f"diffusion_model.{layer}.lora_B.weight"] = torch.randn(out_f, 4, generator=g) * 0.2
    save_file(lora, str(path))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from devkit.server import ComfyServer
    base = tmp_path_factory.mktemp("comfy_compat")
    dm, loras, prof = base / "models" / "diffusion_models", base / "models" / "loras", base / "models" / "sencache"
    for d in (dm, loras, prof):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    shutil.copy(DEMO, dm / DEMO.name)
    write_lora(loras / LORA_NAME)
    shutil.copy(DEMO_PROFILE, prof / DEMO_PROFILE.name)
    if PACKS_READY:
        packs.make_gguf(DEMO, dm / GGUF_NAME)
    srv = ComfyServer(base, tiny=(), extra_nodes={n: p.path for n, p in packs.PACKS.items() if PACKS_READY},
                      pythonpath=(packs.SITE,) if PACKS_READY else (),
                      extra_args=SERVER_ARGS)
    srv.start()                 # one intra-op thread (ComfyServer.start)
    srv.version = srv.get("/system_stats")["system"]["comfyui_version"]
    srv.rows = {}
    print(f"\n[compat] models built and server up in {time.monotonic() - t0:.1f} s (ComfyUI {srv.version})")
    yield srv
    srv.stop()


# -- graphs --------------------------------------------------------------------------------------------------
def graph(case: Case, sencache: dict | None, seed: int = 1) -> dict:
    """The case's graph; `sencache` None = without SenCache, else the SenCache node's settings (and "profile": True
    for the demo profile through Load Profile)."""
    g = {
        "1": case.loader or {"class_type": "UNETLoader", "inputs": {"unet_name": DEMO.name, "weight_dtype": "default"}},
        "2": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
        PROMPT: {"class_type": "SenCacheDemoPrompt", "inputs": {"text": "red circle and blue square on green"}},
        NEGATIVE: {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": [PROMPT, 0]}},
        LATENT_ID: json.loads(json.dumps(LATENT)),
    }
    model = ["2", 0]
    chain = list(case.before) + ([("SENCACHE", None)] if sencache is not None else []) + list(case.after)
    for i, (ct, inputs) in enumerate(chain):
        nid = str(20 + i)
        if ct == "SENCACHE":
            s = dict(sencache)
            if s.pop("profile", False):
                g["19"] = {"class_type": "SenCacheLoadProfile", "inputs": {"profile_name": DEMO_PROFILE.name,
                                                                           "npz_preset": "auto"}}
                s["profile"] = ["19", 0]
            g[nid] = {"class_type": "SenCacheApply", "inputs": {
                "model": model, "eps_main": 0.1, "eps_start": 0.02, "eps_switch_percent": 0.2, "max_consecutive_reuse": 3,
                "reuse_start_percent": 0.0, "reuse_end_percent": 1.0, "protect_final_step": True,
                "use_high_percentile": False, "reuse_mode": "output_extrapolated", "target_speedup": 2.0,
                "learning_runs": 1, **s}}
        else:
            g[nid] = {"class_type": ct, "inputs": {"model": model, **inputs}}
        model = [nid, 0]
    g["8"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": 8, "cfg": 6.0, "sampler_name": "uni_pc", "scheduler": "simple",
        "positive": [PROMPT, 0], "negative": [NEGATIVE, 0], "latent_image": [LATENT_ID, 0], "denoise": 1.0}}
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": f"latents/{case.id}"}}
    return g


EPS0 = {"eps_main": 0.0, "eps_start": 0.0, "target_speedup": 0.0}
BUDGET = {"target_speedup": 2.0}


@dataclasses.dataclass
class Run:
    latent: torch.Tensor | None
    log: str
    traces: list
    error: dict | None = None      # ComfyUI's execution_error event (node_type, exception_type, exception_message)

    def counts(self) -> tuple[int, int]:
        assert len(self.traces) == 1, f"expected one SenCache run, got {len(self.traces)}:\n{self.log[-3000:]}"
        return self.traces[0]["computed"], self.traces[0]["total"]


def run(server, prompt: dict) -> Run:
    """Queue the prompt with a websocket client listening; the saved latent, the server log it wrote and the
    sencache.trace events it sent."""
    import websocket
    from devkit.server import ServerError
    client = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={client}", timeout=300)
    before = len(server.log_tail(10 ** 9))
    latent = error = None
    try:
        try:
            entry = server.run(prompt, timeout=600, client_id=client)
            f = entry["outputs"]["9"]["latents"][0]
            from safetensors.torch import load_file
            latent = load_file(str(server.base / "output" / f["subfolder"] / f["filename"]))["latent_tensor"]
        except ServerError:
            pass                              # the execution_error event below says what failed
        traces, done = [], False
        while not done:                       # the events up to the end of this prompt
            msg = ws.recv()
            if not isinstance(msg, str):
                continue
            m = json.loads(msg)
            if m["type"] == "sencache.trace":
                traces.append(m["data"])
            if m["type"] == "execution_error":
                error = m["data"]
            done = (m["type"] == "executing" and m["data"].get("node") is None) or error is not None
    finally:
        ws.close()
    time.sleep(0.1)
    return Run(latent, server.log_tail(10 ** 9)[before:], traces, error)


def learned_files(server) -> list[str]:
    d = server.base / "models" / "sencache" / "learned"
    return sorted(p.name for p in d.glob("*.safetensors")) if d.is_dir() else []


def clear_learned(server) -> None:
    shutil.rmtree(server.base / "models" / "sencache" / "learned", ignore_errors=True)


# -- the cases -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(server, case):
    if case.pack and not PACKS_READY:
        pytest.skip(PACKS_WHY)
    t0 = time.monotonic()
    clear_learned(server)
    if case.expect == compat_table.WORKS:
        obs = works(server, case)
    elif case.expect == compat_table.STANDS_ASIDE:
        obs = stands_aside(server, case)
    else:
        obs = fails_alone(server, case)
    verdict = compat_table.verdict(obs)
    commit = packs.PACKS[case.pack].commit if case.pack else None
    server.rows[case.id] = {"id": case.id, "node": case.node, "where": case.where, "pack": case.pack or "ComfyUI core",
                            "commit": commit,
                            "result": verdict, "note": case.note}
    print(f"\n[compat] {case.id}: {verdict} in {time.monotonic() - t0:.1f} s; {obs}")
    assert verdict == case.expect, f"{case.id}: expected {case.expect!r}, observed {obs}"


def works(server, case: Case) -> dict:
    # the learning run first: a model compiled by ComfyUI 0.18.1's TorchCompileModel keeps the graph of its first
    # run (tests/test_step_caches.py shows SenCache saying so when that run was without it)
    learning = run(server, graph(case, EPS0))                     # learn mode: the learning run
    learned = learned_files(server)
    ref = run(server, graph(case, None))
    assert ref.error is None and not ref.traces, ref.error
    reuse_learned = run(server, graph(case, BUDGET))               # learn mode: the learned profile, budget 2x
    exact = run(server, graph(case, {**EPS0, "profile": True}))    # the demo profile, ε = 0
    budget = run(server, graph(case, {**BUDGET, "profile": True}))
    for r in (learning, reuse_learned, exact, budget):
        assert r.error is None, r.error
    return {"identical_learning_run": bool(torch.equal(learning.latent, ref.latent)),
            "identical_profile_eps0": bool(torch.equal(exact.latent, ref.latent)),
            "learned": len(learned) == 1,
            "learning_run_computed_all": learning.counts()[0] == learning.counts()[1],
            "reused_learned": list(reuse_learned.counts()), "reused_profile": list(budget.counts()),
            "warning": any(t.get("warning") for r in (learning, reuse_learned, exact, budget) for t in r.traces)}


def stands_aside(server, case: Case) -> dict:
    other = OTHER_NAMES[(case.before + case.after)[0][0]]
    ref = run(server, graph(case, None))
    assert ref.error is None, ref.error
    m = re.search(r"(EasyCache|LazyCache) - skipped (\d+)/(\d+) steps", ref.log)   # its own count, alone
    skipped = bool(m) and int(m.group(2)) > 0
    learn = run(server, graph(case, BUDGET))
    prof = run(server, graph(case, {**BUDGET, "profile": True}))
    obs = {"other_cache_skipped_steps": skipped, "other_cache_log": m.group(0) if m else None,
           "learned": learned_files(server)}
    for name, r in (("learn_mode", learn), ("profile", prof)):
        assert r.error is None, r.error
        t = r.traces[0] if len(r.traces) == 1 else {}
        obs[name] = {"identical": bool(torch.equal(r.latent, ref.latent)),
                     "computed_all": r.counts()[0] == r.counts()[1],
                     "trace_names_it": other in (t.get("warning") or "") and other in (t.get("no_reuse_reason") or ""),
                     "log_names_it": f"SenCache: {other} is also on this model" in r.log}
    return obs


def fails_alone(server, case: Case) -> dict:
    alone = run(server, graph(case, None))
    with_sencache = run(server, graph(case, BUDGET))
    msg = lambda r: f"{r.error['exception_type']}: {r.error['exception_message'].strip()}" if r.error else None
    return {"fails_without_sencache": msg(alone), "fails_with_sencache": msg(with_sencache)}


# -- the node and the toast ----------------------------------------------------------------------------------
def test_stacked_cache_shows_on_the_node_and_in_a_warning_toast(server):
    """The real frontend (headless Chromium) gets the run's trace event: the SenCache node's strip has the trace that
    names EasyCache, and a warning toast says it."""
    from devkit import browser
    if not browser.available():
        pytest.skip(f"Chromium not installed at {browser.CHROMIUM}: run scripts/setup_browser.sh")
    case = next(c for c in CASES if c.id == "easycache_before")
    prompt = graph(case, {**BUDGET, "profile": True}, seed=11)     # a seed of its own: not served from the cache
    sencache_id = next(k for k, n in prompt.items() if n["class_type"] == "SenCacheApply")
    with browser.Chromium(server.url) as page:
        page.wait_for("!!(window.app && window.app.graph && LiteGraph.registered_node_types['SenCacheApply'] && "
                      "window.comfyAPI?.api?.api?.clientId)", timeout=120)
        page.eval(f"Promise.resolve(app.loadApiJson({json.dumps(prompt)}, 'compat.json')).then(() => true)")
        server.run(prompt, timeout=600, client_id=page.eval("window.comfyAPI.api.api.clientId"))
        trace = page.wait_for(f"app.graph.getNodeById({sencache_id}).sencacheTrace", timeout=60)
        assert trace["warning"].startswith("EasyCache (ComfyUI core) is also on this model")
        n = trace["total"]      # the evaluations EasyCache (before SenCache) left to the model: SenCache computed them
        assert trace["computed"] == n and 0 < n <= 8 and not trace["reused"]
        toast = page.wait_for("""[...document.querySelectorAll('.p-toast-message-warn')].map(e => e.innerText)
                                 .filter(t => t.includes('SenCache')).join('\\n')""", timeout=30)
        assert "EasyCache (ComfyUI core) is also on this model" in toast and f"computed {n}/{n}" in toast, toast
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(ARTIFACTS / f"stacked_cache_toast_{server.version}.png")


# -- the table -----------------------------------------------------------------------------------------------
def test_results_match_the_committed_ones(server):
    """This host's rows (also written to test-artifacts/compat/<host>.json) are the committed
    results/compat/<host>.json that the README's table is made from."""
    if len(server.rows) != len(CASES):
        pytest.skip(f"only {len(server.rows)} of {len(CASES)} cases ran")
    rows = [server.rows[c.id] for c in CASES]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    fresh = compat_table.write_results(ARTIFACTS, server.version, rows)
    committed = compat_table.RESULTS / fresh.name
    assert committed.exists() and json.loads(committed.read_text()) == json.loads(fresh.read_text()), (
        f"{committed.relative_to(REPO)} differs from this run's {fresh.relative_to(REPO)}: "
        "run .dev/venv/bin/python -m devkit.compat_table --update-from test-artifacts/compat")
