"""The fault matrix (issue 7): each row runs the real ComfyUI sampler on tiny checkpoints."""
import contextlib
import gc
import math
import os
import pathlib
import random

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings as hsettings, strategies as st

from devkit import sampling


def settings(sc, eps=1.0, k=3, **kw):
    return sc.runtime.SenCacheSettings(eps_start=eps, eps_main=eps, max_consecutive=k, **kw)


def live_run_states(sc):
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, sc.runtime.RunState)]


def count_calls(model):
    """A DIFFUSION_MODEL wrapper (inside ours) that counts real model executions per cond."""
    counter = {"calls": 0, "rows": 0}

    def wrapper(executor, *args, **kwargs):
        counter["calls"] += 1
        counter["rows"] += args[0].shape[0]
        return executor(*args, **kwargs)
    model.add_wrapper_with_key("diffusion_model", "zz_test_count", wrapper)
    return counter


# ---- interruption, long sessions ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interrupt_at_random_step_then_clean_run(sc, wan, conds, wan_profile, seed):
    import comfy.model_management as mm
    m, holder = sc.apply.apply_sencache(wan, wan_profile, settings(sc, eps=1.0, k=2))
    clean = sampling.sample(m, *conds, sampling.wan_latent(), seed=7)
    clean_trace = [(s.sigma, s.reuse, s.reason) for s in holder.last_trace.steps]
    stop_at = random.Random(seed).randint(1, 7)
    n = {"i": 0}

    def interrupt(executor, *args, **kwargs):
        n["i"] += 1
        if n["i"] == stop_at:
            raise mm.InterruptProcessingException()
        return executor(*args, **kwargs)
    mi = m.clone()
    mi.add_wrapper_with_key("calc_cond_batch", "test_interrupt", interrupt)
    with pytest.raises(mm.InterruptProcessingException):
        sampling.sample(mi, *conds, sampling.wan_latent(), seed=3)
    assert holder.last_trace.interrupted and len(holder.last_trace.steps) == stop_at - 1
    assert live_run_states(sc) == []                       # nothing of the run (and none of its tensors) is kept
    again = sampling.sample(m, *conds, sampling.wan_latent(), seed=7)
    assert torch.equal(again, clean) and [(s.sigma, s.reuse, s.reason) for s in holder.last_trace.steps] == clean_trace


@contextlib.contextmanager
def interrupt_at_model_pass(model, k: int):
    """Press ComfyUI's interrupt as the k-th model pass begins, as POST /interrupt does from the server's thread: a
    forward pre-hook on the diffusion model's first layer, which every pass goes through (the sampler's and the
    measuring extra pass), sets the flag; that layer's own check (comfy.ops) then raises InterruptProcessingException.
    Yields the batch sizes of the passes that began."""
    import comfy.model_management as mm
    passes = []

    def hook(module, args):
        passes.append(args[0].shape[0])
        if len(passes) == k:
            mm.interrupt_current_processing()
    handle = model.model.diffusion_model.patch_embedding.register_forward_pre_hook(hook)
    try:
        yield passes
    finally:
        handle.remove()
        mm.interrupt_current_processing(False)


# with CFG the passes are: step 1 (cond + uncond batched), step 2, step 2's extra pass (cond rows only), step 3, ...;
# pass 3 is the first measuring extra pass, pass 4 a sampler pass
@pytest.mark.parametrize("cfg", [5.0, 1.0])
@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("what", ["learning run", "calibration", "cached run"])
def test_one_interrupt_stops_every_kind_of_run_and_stores_nothing(sc, wan, conds, wan_profile, what, k, cfg):
    import comfy.model_management as mm
    store = pathlib.Path(sc.learn.store_dir())
    for f in store.glob("*.safetensors"):
        f.unlink()
    if what == "learning run":
        m, holder = sc.apply.apply_sencache(wan, None, settings(sc, eps=0.3))
        go = lambda: sampling.sample(m, *conds, sampling.wan_latent(), seed=3, cfg=cfg)
    elif what == "calibration":
        holder = None
        go = lambda: sc.calibrate.calibrate(wan, *conds, {"samples": sampling.wan_latent()}, 0, 8, cfg, "euler",
                                            "simple", 2)
    else:
        m, holder = sc.apply.apply_sencache(wan, wan_profile, settings(sc, eps=0.0))
        go = lambda: sampling.sample(m, *conds, sampling.wan_latent(), seed=3, cfg=cfg)
    with interrupt_at_model_pass(wan, k) as passes, pytest.raises(mm.InterruptProcessingException):
        with torch.inference_mode():
            go()
    assert len(passes) == k                                # not one model pass after the interrupt
    assert not mm.processing_interrupted()
    assert list(store.glob("*.safetensors")) == []         # an interrupted run stores no profile
    if holder is not None:
        assert holder.last_trace.interrupted
    if what == "learning run":
        assert holder.last_trace.config["profile_status"] == "learning run interrupted"
        again = sampling.sample(m, *conds, sampling.wan_latent(), seed=3, cfg=cfg)   # the next run learns in full
        assert torch.isfinite(again).all() and len(list(store.glob("*.safetensors"))) == 1
        for f in store.glob("*.safetensors"):
            f.unlink()


@pytest.mark.parametrize("what", ["learning run", "calibration"])
def test_a_run_that_fails_stores_nothing(sc, wan, conds, what):
    """A model error in a sampler pass (here: pass 4) ends the run with that error; no profile is stored or updated."""
    store = pathlib.Path(sc.learn.store_dir())
    for f in store.glob("*.safetensors"):
        f.unlink()
    passes = []

    def fail(module, args):
        passes.append(1)
        if len(passes) == 4:
            raise RuntimeError("the model failed")
    handle = wan.model.diffusion_model.patch_embedding.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="the model failed"), torch.inference_mode():
            if what == "learning run":
                m, holder = sc.apply.apply_sencache(wan, None, settings(sc, eps=0.3))
                sampling.sample(m, *conds, sampling.wan_latent(), seed=3)
            else:
                sc.calibrate.calibrate(wan, *conds, {"samples": sampling.wan_latent()}, 0, 8, 5.0, "euler", "simple", 1)
    finally:
        handle.remove()
    assert len(passes) == 4 and list(store.glob("*.safetensors")) == []
    if what == "learning run":
        assert holder.last_trace.interrupted and holder.profile is None


def test_200_runs_hold_no_growing_state(sc, wan, conds, wan_profile):
    m, holder = sc.apply.apply_sencache(wan, wan_profile, settings(sc, eps=1.0, k=2))
    lat = sampling.wan_latent(frames=2, h=4, w=4)

    def tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))
    for _ in range(5):
        sampling.sample(m, *conds, lat, seed=1, steps=4)
    before = tensors()
    for i in range(200):
        sampling.sample(m, *conds, lat, seed=i, steps=4)
    after = tensors()
    # Bound: the holder keeps only the last trace (plain Python numbers); no per-run tensors survive.
    assert after - before <= 5, (before, after)
    assert live_run_states(sc) == [] and len(holder.last_trace.steps) == 4


# ---- shapes ----------------------------------------------------------------------------------------
def test_shape_frames_and_batch_change_between_runs(sc, wan, conds, wan_profile):
    m, holder = sc.apply.apply_sencache(wan, wan_profile, settings(sc, eps=0.0))
    for lat in (sampling.wan_latent(3, 8, 8), sampling.wan_latent(5, 8, 8), sampling.wan_latent(3, 12, 8),
                sampling.wan_latent(3, 8, 8, batch=2)):
        ref = sampling.sample(wan, *conds, lat, seed=4)
        assert torch.equal(sampling.sample(m, *conds, lat, seed=4), ref)
    m, holder = sc.apply.apply_sencache(wan, wan_profile, settings(sc, eps=1.0))
    out = sampling.sample(m, *conds, sampling.wan_latent(3, 8, 8, batch=2), seed=4)
    assert out.shape[0] == 2 and torch.isfinite(out).all() and holder.last_trace.reused > 0
    assert all(sorted(s.reused_conds if s.reuse else s.computed_conds) == ["cond", "uncond"] for s in holder.last_trace.steps)


# ---- several models / samplers -----------------------------------------------------------------------
def test_two_patched_models_and_one_model_two_samplers(sc, tiny, wan, conds, wan_profile):
    a, ha = sc.apply.apply_sencache(wan, wan_profile, settings(sc, eps=1.0, k=2))
    b, hb = sc.apply.apply_sencache(wan, wan_profile, settings(sc, eps=0.0))
    ref = sampling.sample(wan, *conds, sampling.wan_latent(), seed=5)
    x1 = sampling.sample(a, *conds, sampling.wan_latent(), seed=5)
    x2 = sampling.sample(b, *conds, sampling.wan_latent(), seed=5)
    assert ha.last_trace is not hb.last_trace and ha.last_trace.reused > 0 and hb.last_trace.reused == 0
    assert torch.equal(x2, ref) and not torch.equal(x1, ref)
    # the same patched model in two samplers of one prompt, back to back, with different latents
    y1 = sampling.sample(a, *conds, sampling.wan_latent(3, 8, 8), seed=6)
    t1 = [(s.reuse, s.reason) for s in ha.last_trace.steps]
    sampling.sample(a, *conds, sampling.wan_latent(5, 4, 4), seed=8)
    y1b = sampling.sample(a, *conds, sampling.wan_latent(3, 8, 8), seed=6)
    assert torch.equal(y1, y1b) and [(s.reuse, s.reason) for s in ha.last_trace.steps] == t1


def test_conditioning_switching_mid_run_never_reuses_across_the_switch(sc, wan, wan_profile):
    import node_helpers
    a, b = sampling.text_cond(11), sampling.text_cond(12)
    pos = node_helpers.conditioning_set_values(a, {"start_percent": 0.0, "end_percent": 0.5}) + \
        node_helpers.conditioning_set_values(b, {"start_percent": 0.5, "end_percent": 1.0})
    neg = sampling.text_cond(2)
    m, holder = sc.apply.apply_sencache(wan, wan_profile, settings(sc, eps=50.0, k=8))
    out = sampling.sample(m, pos, neg, sampling.wan_latent(), seed=3, steps=10)
    tr = holder.last_trace
    assert torch.isfinite(out).all()
    # the first evaluation after the switch has a conditioning with no cache: it is computed
    conds_seen = [tuple(sorted(s.computed_conds + s.reused_conds)) for s in tr.steps]
    assert tr.reused > 0
    switch = [i for i in range(1, len(tr.steps)) if tr.config and tr.steps[i].reason == "cache_invalid"]
    assert len(switch) == 1 and not tr.steps[switch[0]].reuse


# ---- samplers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["heun", "dpm_2", "euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde"])
def test_multi_evaluation_and_stochastic_samplers_count_correctly(sc, wan, conds, wan_profile, sampler):
    m, holder = sc.apply.apply_sencache(wan, wan_profile, settings(sc, eps=1.0, k=2))
    counter = count_calls(m)
    out = sampling.sample(m, *conds, sampling.wan_latent(), seed=2, steps=6, sampler_name=sampler)
    tr = holder.last_trace
    assert torch.isfinite(out).all()
    assert tr.computed == counter["calls"]                      # every computed decision is one real model call
    per = tr.per_cond()
    assert per["cond"][0] == per["uncond"][0] == counter["calls"]
    assert len(tr.steps) == tr.computed + tr.reused
    plain = count_calls(wan.clone())
    mc = wan.clone()
    c2 = count_calls(mc)
    sampling.sample(mc, *conds, sampling.wan_latent(), seed=2, steps=6, sampler_name=sampler)
    assert len(tr.steps) == c2["calls"]                        # one decision per model evaluation of the sampler
    assert all(c <= 2 for c in _runs_of_reuse(tr))


def _runs_of_reuse(tr):
    runs, n = [], 0
    for s in tr.steps:
        n = n + 1 if s.reuse else 0
        runs.append(n)
    return runs


def test_cfg_one_has_no_uncond_pass(sc, wan, conds, wan_profile):
    m, holder = sc.apply.apply_sencache(wan, wan_profile, settings(sc, eps=0.0))
    ref = sampling.sample(wan, *conds, sampling.wan_latent(), seed=2, cfg=1.0)
    assert torch.equal(sampling.sample(m, *conds, sampling.wan_latent(), seed=2, cfg=1.0), ref)
    assert set(holder.last_trace.per_cond()) == {"cond"}
    m, holder = sc.apply.apply_sencache(wan, wan_profile, settings(sc, eps=1.0))
    sampling.sample(m, *conds, sampling.wan_latent(), seed=2, cfg=1.0)
    assert holder.last_trace.reused > 0 and set(holder.last_trace.per_cond()) == {"cond"}


def _context_window_inputs() -> set:
    from comfy_extras.nodes_context_windows import WanContextWindowsManualNode
    return {i.id for i in WanContextWindowsManualNode.define_schema().inputs}


@pytest.mark.parametrize("freenoise", [None, False, True])
def test_context_windows_keep_state_per_window(sc, wan, conds, wan_profile, freenoise):
    """Core's context windows, with FreeNoise off and on where the node has that input (ComfyUI 0.17 and later
    require it; None = the node has no such input, as on 0.3.75)."""
    from comfy_extras.nodes_context_windows import WanContextWindowsManualNode
    has_freenoise = "freenoise" in _context_window_inputs()
    if (freenoise is None) == has_freenoise:
        pytest.skip("this host's context-window node " + ("requires a freenoise input" if has_freenoise else "has no freenoise input"))
    extra = {} if freenoise is None else {"freenoise": freenoise}
    lat = sampling.wan_latent(frames=9, h=8, w=8)
    cw = WanContextWindowsManualNode.execute(wan, context_length=17, context_overlap=8, context_schedule="standard_static",
                                            context_stride=1, closed_loop=False, fuse_method="pyramid", **extra).args[0]
    ref = sampling.sample(cw, *conds, lat, seed=1)
    m, holder = sc.apply.apply_sencache(cw, wan_profile, settings(sc, eps=0.0))
    assert torch.equal(sampling.sample(m, *conds, lat, seed=1), ref)
    windows = {tuple(s.window) for s in holder.last_trace.steps}
    assert len(windows) >= 2                                   # decisions were made per window
    m, holder = sc.apply.apply_sencache(cw, wan_profile, settings(sc, eps=1.0, k=2))
    out = sampling.sample(m, *conds, lat, seed=1)
    tr = holder.last_trace
    assert torch.isfinite(out).all() and tr.reused > 0
    for w in windows:   # each window's own first evaluation is computed, K holds per window
        ws = [s for s in tr.steps if tuple(s.window) == w]
        assert ws[0].reason == "first" and max(_runs_of_reuse(type(tr)(steps=ws))) <= 2


def test_lora_patched_model(sc, wan, conds, wan_profile):
    import comfy.sd
    dm = wan.model.diffusion_model
    g = torch.Generator().manual_seed(0)
    lora = {}
    for name in ("blocks.0.self_attn.q", "blocks.1.ffn.0"):
        w = dict(dm.named_modules())[name].weight
        lora[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(w.shape[0], 4, generator=g) * 0.1
        lora[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(4, w.shape[1], generator=g) * 0.1
    lm, _ = comfy.sd.load_lora_for_models(wan, None, lora, 1.0, 0.0)
    ref = sampling.sample(lm, *conds, sampling.wan_latent(), seed=2)
    assert not torch.equal(ref, sampling.sample(wan, *conds, sampling.wan_latent(), seed=2))   # the LoRA acts
    m, holder = sc.apply.apply_sencache(lm, wan_profile, settings(sc, eps=0.0))
    assert torch.equal(sampling.sample(m, *conds, sampling.wan_latent(), seed=2), ref)
    # LoRA after SenCache (a clone deep-copies model_options): same holder, still cached
    m2, holder2 = sc.apply.apply_sencache(wan, wan_profile, settings(sc, eps=1.0))
    lm2, _ = comfy.sd.load_lora_for_models(m2, None, lora, 1.0, 0.0)
    sampling.sample(lm2, *conds, sampling.wan_latent(), seed=2)
    assert holder2.last_trace is not None and holder2.last_trace.reused > 0


def test_torch_compiled_model_keeps_decisions_outside_the_graph(sc, wan, conds, wan_profile):
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    import torch._dynamo
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cm = wan.clone()
    set_torch_compile_wrapper(cm, backend="eager")        # ComfyUI's own compile path; eager backend: no C++ build
    ref = sampling.sample(wan, *conds, sampling.wan_latent(), seed=2)
    m, holder = sc.apply.apply_sencache(cm, wan_profile, settings(sc, eps=0.0))
    assert torch.allclose(sampling.sample(m, *conds, sampling.wan_latent(), seed=2), ref, atol=1e-5)
    m, holder = sc.apply.apply_sencache(cm, wan_profile, settings(sc, eps=1.0, k=2))
    sampling.sample(m, *conds, sampling.wan_latent(), seed=2)
    assert holder.last_trace.reused > 0 and holder.last_trace.computed >= 2
    frames = torch._dynamo.utils.counters["frames"]
    assert frames["ok"] > 0                                  # the model really was compiled ...
    breaks = " ".join(str(k) for k in torch._dynamo.utils.counters["graph_break"])
    # ... but dynamo skips our decision code instead of tracing it (it would break on perf_counter / float())
    assert "Skip inlining function <function RunState.before_call" in breaks
    assert "perf_counter" not in breaks, breaks


# ---- inputs are never modified in place; dtypes ------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_inputs_never_modified_and_eps_zero_per_dtype(sc, tiny, comfy_base, conds, dtype):
    import comfy.sd
    import pathlib
    from devkit import tiny_models
    path = tiny_models.write_checkpoint("tiny_wan21_t2v", pathlib.Path(comfy_base) / "models" / "diffusion_models")
    model = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": dtype})
    _, prof = sc.calibrate.calibrate(model, *conds, {"samples": sampling.wan_latent()}, 0, 6, 5.0, "euler", "simple", 1)
    ref = sampling.sample(model, *conds, sampling.wan_latent(), seed=1, steps=6)
    m, holder = sc.apply.apply_sencache(model, prof, settings(sc, eps=0.0))
    assert torch.equal(sampling.sample(m, *conds, sampling.wan_latent(), seed=1, steps=6), ref)
    for mode in ("output", "output_minus_input"):
        m, holder = sc.apply.apply_sencache(model, prof, settings(sc, eps=5.0, k=3, reuse_mode=mode))
        changed = []

        def watch(executor, *args, **kwargs):    # outside ours: sees what the sampler hands in, checks it after
            snap = args[0].clone()
            out = executor(*args, **kwargs)
            changed.append(not torch.equal(snap, args[0]))
            return out
        m.add_wrapper_with_key("diffusion_model", "00_test_watch", watch)
        m.wrappers["diffusion_model"] = {"00_test_watch": m.wrappers["diffusion_model"].pop("00_test_watch"),
                                         **m.wrappers["diffusion_model"]}
        out = sampling.sample(m, *conds, sampling.wan_latent(), seed=1, steps=6)
        assert holder.last_trace.reused > 0 and changed and not any(changed)
        assert torch.isfinite(out).all()


# ---- profile files -----------------------------------------------------------------------------------
def test_profile_files_bad_and_huge_and_traversal(sc, host, wan_profile):
    import folder_paths
    d = folder_paths.get_folder_paths("sencache")[0]
    os.makedirs(d, exist_ok=True)
    huge = os.path.join(d, "huge.safetensors")
    with open(huge, "wb") as f:
        f.truncate(200 * 1024 * 1024)        # sparse: 200 MB on paper, nothing read
    with pytest.raises(sc.core.ProfileError, match="refusing"):
        sc.profiles.load("huge.safetensors")
    with open(os.path.join(d, "trunc.safetensors"), "wb") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(sc.core.ProfileError, match="cannot read"):
        sc.profiles.load("trunc.safetensors")
    outside = os.path.join(os.path.dirname(d), "outside.safetensors")
    wan_profile.save(outside)
    os.symlink(outside, os.path.join(d, "link.safetensors"))
    with pytest.raises(sc.core.ProfileError, match="outside"):
        sc.profiles.load("link.safetensors")
    for bad in ("../outside.safetensors", "..\\outside.safetensors", "/abs.safetensors", ""):
        with pytest.raises(sc.core.ProfileError):
            sc.profiles.load(bad)
    LoadProfile = host.NODE_CLASS_MAPPINGS["SenCacheLoadProfile"]
    with pytest.raises(sc.core.ProfileError):
        LoadProfile.execute(profile_name="../outside.safetensors", npz_preset="auto")


# ---- properties ------------------------------------------------------------------------------------
finite = st.floats(min_value=0.0, max_value=50.0, allow_nan=False)


@hsettings(max_examples=200, deadline=None)
@given(grid=st.lists(st.floats(min_value=0.001, max_value=20.0), min_size=1, max_size=12, unique=True),
       data=st.data())
def test_property_interpolation_stays_within_neighbours(sc, grid, data):
    grid = sorted(grid)
    if any(b - a < 1e-9 for a, b in zip(grid, grid[1:])):
        return
    ax = data.draw(st.lists(finite, min_size=len(grid), max_size=len(grid)))
    at = data.draw(st.lists(finite, min_size=len(grid), max_size=len(grid)))
    if not (any(ax) or any(at)):          # a profile that predicts no change anywhere is refused
        with pytest.raises(sc.core.ProfileError, match="0 at every σ"):
            sc.core.SensitivityProfile(sigmas=grid, alpha_x=ax, alpha_t=at)
        return
    p = sc.core.SensitivityProfile(sigmas=grid, alpha_x=ax, alpha_t=at)
    s = data.draw(st.floats(min_value=grid[0], max_value=grid[-1]))
    v = p.lookup(s)
    assert v is not None
    i = int(np.searchsorted(grid, s))
    lo, hi = max(i - 1, 0), min(i, len(grid) - 1)
    for got, arr in zip(v, (ax, at)):
        assert min(arr[lo], arr[hi]) - 1e-9 <= got <= max(arr[lo], arr[hi]) + 1e-9
    for gs, a, t in zip(grid, ax, at):
        assert p.lookup(gs) == pytest.approx((a, t))


@hsettings(max_examples=200, deadline=None)
@given(eps=finite, k=st.integers(0, 6), steps=st.lists(st.tuples(st.floats(0.0, 2.0), finite), min_size=1, max_size=40),
       ax=finite, at=finite)
def test_property_policy_never_exceeds_k_and_is_deterministic(sc, eps, k, steps, ax, at):
    assume(ax > 0 or at > 0)                # (an all-zero profile is refused: test_property_interpolation...)
    prof = sc.core.SensitivityProfile(sigmas=[0.0, 1.0], alpha_x=[ax, ax], alpha_t=[at, at])
    pol = sc.core.ReusePolicy(prof, eps, eps, k)
    runs = []
    for _ in range(2):
        stt, seq, sigma, consecutive = sc.core.PolicyState(), [], 1.0, 0
        for i, (dsig, dx) in enumerate(steps):
            sigma = max(sigma - dsig / 40, 0.0)
            d = pol.decide(stt, sigma, None if i == 0 else dx, i == len(steps) - 1, True)
            pol.commit(stt, sigma, d)
            consecutive = consecutive + 1 if d.reuse else 0
            assert consecutive <= k
            if i == 0 or i == len(steps) - 1:
                assert not d.reuse
            if d.reuse:
                assert d.score < eps
            seq.append((d.reuse, d.reason, d.score))
        runs.append(seq)
    assert runs[0] == runs[1]
    assert stt.computed + stt.reused == len(steps)
