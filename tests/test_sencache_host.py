"""SenCache against the real ComfyUI: tiny Wan/LTXV checkpoints loaded through comfy.sd, sampled by the
real sampler, patched only through the pack's nodes."""
import math

import numpy as np
import pytest
import torch

from devkit import sampling


def settings(sc, eps=0.3, eps_start=None, k=3, **kw):
    return sc.runtime.SenCacheSettings(eps_start=eps if eps_start is None else eps_start, eps_main=eps, max_consecutive=k, **kw)


def patched(sc, model, profile, **kw):
    return sc.apply.apply_sencache(model, profile, settings(sc, **kw))


def recompute_rule(trace, profile, eps_start, eps_main, k, sigma_switch, final_sigmas):
    """The decision rule, recomputed independently of sencache_core.policy from the recorded trace."""
    sigma_ref, consecutive = None, 0
    for s in trace.steps:
        eps = eps_start if s.sigma > sigma_switch else eps_main
        assert s.eps == eps
        if sigma_ref is None:
            expect = False
        else:
            assert s.dsigma == pytest.approx(abs(s.sigma - sigma_ref), abs=1e-12)
            final = any(abs(s.sigma - f) < 1e-9 for f in final_sigmas)
            lo, hi = profile.sigmas[0], profile.sigmas[-1]
            inside = lo - 0.05 * (hi - lo) <= sigma_ref <= hi + 0.05 * (hi - lo)
            if final or not inside:
                expect = False
            elif consecutive >= k:          # K decides: no score, and Δx is not even measured
                assert s.reason == "max_consecutive" and s.score is None and s.dx is None
                expect = False
            elif eps <= 0:                  # S < 0 is impossible: no score needed
                assert s.reason == "score_above_eps" and s.score is None
                expect = False
            else:
                score = np.interp(sigma_ref, profile.sigmas, profile.alpha_x) * s.dx + \
                    np.interp(sigma_ref, profile.sigmas, profile.alpha_t) * abs(s.sigma - sigma_ref)
                assert s.score == pytest.approx(score, rel=1e-9)
                expect = bool(score < eps)
        assert s.reuse == expect, (s.index, s.sigma, s.reason)
        if s.reuse:
            consecutive += 1
        else:
            sigma_ref, consecutive = s.sigma, 0
        assert consecutive <= k


def test_nodes_registered(host):
    for node_id in ("SenCacheApply", "SenCacheCalibrator", "SenCacheSaveProfile", "SenCacheLoadProfile"):
        assert node_id in host.NODE_CLASS_MAPPINGS
        info = host.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
        for section in ("required", "optional"):
            for name, spec in info.get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_shipped_nodes_import_no_training_or_devkit_code(pack, sc):
    """Every node module is imported as ComfyUI loads the pack (no optional loading); none of them pulls in the demo
    model's training script or the devkit."""
    import sys
    loaded = {m for m in sys.modules if m.startswith(pack.__name__ + ".")}
    assert {f"{pack.__name__}.nodes.{n}" for n in ("visualize", "demo", "plotting", "ui_events")} <= loaded
    assert not any(m.endswith(".demo_model.train") or ".devkit" in m for m in loaded)


@pytest.mark.parametrize("sampler", ["euler", "uni_pc"])
def test_eps_zero_is_bit_identical_wan_batched(sc, wan, conds, wan_profile, sampler):
    ref = sampling.sample(wan, *conds, sampling.wan_latent(), seed=3, sampler_name=sampler)
    m, holder = patched(sc, wan, wan_profile, eps=0.0)
    out = sampling.sample(m, *conds, sampling.wan_latent(), seed=3, sampler_name=sampler)
    assert torch.equal(out, ref)
    assert holder.last_trace.reused == 0 and holder.last_trace.computed == 8
    # the plan knows nothing can be reused: no Δx measured, nothing cached
    assert holder.last_trace.config["no_reuse_reason"] == "ε is 0"
    assert all(s.dx is None and s.score is None for s in holder.last_trace.steps)
    # both conds went through one batched call per step
    assert all(sorted(s.computed_conds) == ["cond", "uncond"] for s in holder.last_trace.steps)


def test_eps_zero_is_bit_identical_wan_separate_calls(sc, wan, wan_profile):
    # different token counts cannot be concatenated: ComfyUI calls the model once per cond
    pos, neg = sampling.text_cond(1, tokens=4), sampling.text_cond(2, tokens=7)
    ref = sampling.sample(wan, pos, neg, sampling.wan_latent(), seed=3)
    m, holder = patched(sc, wan, wan_profile, eps=0.0)
    assert torch.equal(sampling.sample(m, pos, neg, sampling.wan_latent(), seed=3), ref)
    m, holder = patched(sc, wan, wan_profile, eps=0.5, k=2)
    out = sampling.sample(m, pos, neg, sampling.wan_latent(), seed=3)
    tr = holder.last_trace
    assert len(tr.steps) == 8 and tr.reused > 0
    for s in tr.steps:   # one decision per step covers both conds
        assert sorted(s.reused_conds if s.reuse else s.computed_conds) == ["cond", "uncond"]
    assert torch.isfinite(out).all()


def test_eps_zero_is_bit_identical_ltxv(sc, tiny):
    ltx = tiny("tiny_ltxv")
    pos, neg = sampling.ltxv_conds(5)
    lat = torch.zeros(1, 128, 2, 4, 4)
    _, prof = sc.calibrate.calibrate(ltx, pos, neg, {"samples": lat}, 0, 6, 3.0, "euler", "simple", 1)
    assert prof.metadata["latent_channels"] == 128
    ref = sampling.sample(ltx, pos, neg, lat, seed=1, steps=6, cfg=3.0)
    m, holder = patched(sc, ltx, prof, eps=0.0)
    assert torch.equal(sampling.sample(m, pos, neg, lat, seed=1, steps=6, cfg=3.0), ref)
    m, holder = patched(sc, ltx, prof, eps=5.0, k=2)
    sampling.sample(m, pos, neg, lat, seed=1, steps=6, cfg=3.0)
    assert holder.last_trace.reused > 0


@pytest.mark.parametrize("sampler,eps,k", [("euler", 0.3, 3), ("euler", 2.0, 2), ("uni_pc", 0.5, 1), ("dpmpp_2m", 1.0, 4)])
def test_every_decision_follows_the_rule(sc, wan, conds, wan_profile, sampler, eps, k):
    m, holder = patched(sc, wan, wan_profile, eps=eps, eps_start=eps / 4, k=k)
    steps = 12
    sampling.sample(m, *conds, sampling.wan_latent(), seed=5, steps=steps, sampler_name=sampler)
    tr = holder.last_trace
    ms = wan.model.model_sampling
    sig = tr.config["sample_sigmas"]
    final = [sig[i] for i in range(len(sig) - 1) if sig[i + 1] == 0]
    recompute_rule(tr, wan_profile, eps / 4, eps, k, float(ms.percent_to_sigma(0.2)), final)
    assert not tr.steps[0].reuse and tr.steps[0].reason == "first"
    assert not tr.steps[-1].reuse and tr.steps[-1].reason == "final_step"
    assert tr.reused > 0


def test_same_seed_twice_identical_and_interrupt_leaves_nothing(sc, wan, conds, wan_profile):
    import comfy.model_management as mm
    m, holder = patched(sc, wan, wan_profile, eps=1.0, k=2)
    a = sampling.sample(m, *conds, sampling.wan_latent(), seed=9)
    ta = holder.last_trace.to_dict()
    b = sampling.sample(m, *conds, sampling.wan_latent(), seed=9)
    tb = holder.last_trace.to_dict()
    assert torch.equal(a, b)
    strip = lambda t: [{k: v for k, v in s.items() if k != "model_seconds"} for s in t["steps"]]
    assert strip(ta) == strip(tb) and ta["reused"] > 0

    import comfy.sample
    calls = {"n": 0}

    def interrupt_at_step(executor, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:     # what ComfyUI's progress hook raises when the user presses Cancel
            raise mm.InterruptProcessingException()
        return executor(*args, **kwargs)
    mi = m.clone()
    mi.add_wrapper_with_key("calc_cond_batch", "test_interrupt", interrupt_at_step)
    with pytest.raises(mm.InterruptProcessingException):
        sampling.sample(mi, *conds, sampling.wan_latent(), seed=1)
    assert holder.last_trace.interrupted and len(holder.last_trace.steps) < 8
    c = sampling.sample(m, *conds, sampling.wan_latent(), seed=9)
    assert torch.equal(c, a) and strip(holder.last_trace.to_dict()) == strip(ta)


def test_calibrator_alpha_equals_direct_finite_difference(sc, wan, conds):
    """Record the states of a plain run, evaluate the diffusion model directly, and compare with the profile."""
    states = []

    def record(executor, *args, **kwargs):
        to = args[-1] if isinstance(args[-1], dict) else kwargs["transformer_options"]
        cou = to["cond_or_uncond"]
        per = args[0].shape[0] // len(cou)
        i = cou.index(0)
        states.append((args[0][i * per:(i + 1) * per].clone(), float(to["sigmas"][0]), args[2][i * per:(i + 1) * per].clone()))
        return executor(*args, **kwargs)
    rec = wan.clone()
    rec.add_wrapper_with_key("diffusion_model", "test_record", record)
    plain = sampling.sample(rec, *conds, sampling.wan_latent(), seed=11, steps=6, sampler_name="euler")
    lat, prof = sc.calibrate.calibrate(wan, *conds, {"samples": sampling.wan_latent()}, 11, 6, 5.0, "euler", "simple", 1)
    assert torch.equal(lat["samples"], plain)           # the calibrator's latent is the plain sampler's
    dm, ms = wan.model.diffusion_model, wan.model.model_sampling
    f = lambda x, s, ctx: dm(x, ms.timestep(torch.tensor([s])), ctx)
    rms = lambda v: float(v.norm() / math.sqrt(v.numel()))
    with torch.no_grad():
        for (x0, s0, c0), (x1, s1, c1) in zip(states, states[1:]):
            f00, f10, f11 = f(x0, s0, c0), f(x1, s0, c1), f(x1, s1, c1)
            ax, at = rms(f10 - f00) / rms(x1 - x0), rms(f11 - f10) / abs(s1 - s0)
            j = int(np.argmin(np.abs(prof.sigmas - s0)))
            assert prof.sigmas[j] == pytest.approx(s0, abs=1e-6)
            assert prof.alpha_x[j] == pytest.approx(ax, rel=1e-4) and prof.alpha_t[j] == pytest.approx(at, rel=1e-4)
    assert prof.sigmas.size == 5 and prof.metadata["sampler"] == "euler" and prof.metadata["runs"] == 1


def test_calibrator_extra_pass_runs_on_the_cond_rows_only(sc, wan, conds):
    """With CFG the sampler's calls carry cond + uncond (batch 2); the calibrator's extra pass carries the cond row."""
    batches = []
    block = wan.model.diffusion_model.blocks[0]       # sees every forward, the wrapped ones included
    handle = block.register_forward_pre_hook(lambda mod, args: batches.append(args[0].shape[0]))
    try:
        sc.calibrate.calibrate(wan, *conds, {"samples": sampling.wan_latent()}, 0, 5, 5.0, "euler", "simple", 1)
    finally:
        handle.remove()
    assert batches == [2] + [2, 1] * 4          # 5 sampler calls; an extra pass from the second on


def test_split_sampling_two_experts_and_denoise(sc, tiny, wan, conds, wan_profile):
    """Wan 2.2 A14B style: two models, two KSamplerAdvanced (steps 0-4 and 4-8), each with its own SenCache."""
    import comfy.sd
    from devkit import tiny_models
    import pathlib, tempfile
    low = comfy.sd.load_diffusion_model(str(tiny_models.write_checkpoint("tiny_wan21_t2v", pathlib.Path(tempfile.mkdtemp()), seed=7)))

    def split(high_m, low_m):
        lat = sampling.sample(high_m, *conds, sampling.wan_latent(), seed=2, steps=8, start_step=0, last_step=4)
        return sampling.sample(low_m, *conds, lat, seed=2, steps=8, start_step=4, last_step=10000, disable_noise=True)
    ref = split(wan, low)
    hm, hh = patched(sc, wan, wan_profile, eps=0.0)
    lm, lh = patched(sc, low, wan_profile, eps=0.0)
    assert torch.equal(split(hm, lm), ref)
    hm, hh = patched(sc, wan, wan_profile, eps=5.0, k=2)
    lm, lh = patched(sc, low, wan_profile, eps=5.0, k=2)
    out = split(hm, lm)
    assert torch.isfinite(out).all()
    th, tl = hh.last_trace, lh.last_trace
    assert len(th.steps) == 4 and len(tl.steps) == 4
    assert min(s.sigma for s in th.steps) > max(s.sigma for s in tl.steps)      # each expert its own σ range
    assert th.steps[0].reason == "first" and tl.steps[0].reason == "first"      # state is per model and per run
    assert tl.steps[-1].reason == "final_step" and th.steps[-1].reason != "final_step"
    # denoise < 1: the schedule starts lower; the rule still holds in σ space
    m, holder = patched(sc, wan, wan_profile, eps=2.0, k=3)
    sampling.sample(m, *conds, sampling.wan_latent(), seed=2, steps=8, denoise=0.6)
    tr = holder.last_trace
    assert tr.steps[0].sigma < 1.0 and tr.reused > 0
    sig = tr.config["sample_sigmas"]
    recompute_rule(tr, wan_profile, 2.0, 2.0, 3, float(wan.model.model_sampling.percent_to_sigma(0.2)), [sig[-2]])


def test_i2v_counts_only_noisy_channels_and_wan22(sc, tiny):
    i2v = tiny("tiny_wan21_i2v")
    pos, neg = sampling.text_cond(1), sampling.text_cond(2)
    image = torch.randn(1, 16, 3, 8, 8)
    for c in (pos, neg):
        c[0][1]["concat_latent_image"] = image
        c[0][1]["concat_mask"] = torch.zeros(1, 1, 3, 8, 8)
    _, prof = sc.calibrate.calibrate(i2v, pos, neg, {"samples": sampling.wan_latent()}, 0, 6, 4.0, "euler", "simple", 1)
    ref = sampling.sample(i2v, pos, neg, sampling.wan_latent(), seed=4, steps=6, cfg=4.0)
    m, holder = patched(sc, i2v, prof, eps=0.0)
    assert torch.equal(sampling.sample(m, pos, neg, sampling.wan_latent(), seed=4, steps=6, cfg=4.0), ref)
    m, holder = patched(sc, i2v, prof, eps=3.0, k=2)
    seen = []
    m.add_wrapper_with_key("diffusion_model", "test_shape", lambda ex, *a, **k: (seen.append(a[0].shape[1]), ex(*a, **k))[1])
    sampling.sample(m, pos, neg, sampling.wan_latent(), seed=4, steps=6, cfg=4.0)
    assert set(seen) == {36} and holder.last_trace.reused > 0     # the model sees 16 noise + 20 conditioning channels
    # Wan 2.2 5B: 48-channel latents
    w22 = tiny("tiny_wan22_5b")
    lat = sampling.wan_latent(channels=48)
    _, p22 = sc.calibrate.calibrate(w22, pos[:1], neg[:1], {"samples": lat}, 0, 6, 4.0, "euler", "simple", 1)
    assert p22.metadata["latent_channels"] == 48
    m, holder = patched(sc, w22, p22, eps=3.0, k=2)
    assert torch.isfinite(sampling.sample(m, sampling.text_cond(1), sampling.text_cond(2), lat, seed=1, steps=6)).all()
    assert holder.last_trace.reused > 0


def test_bad_inputs_are_refused_at_execution(sc, tiny, wan, wan_profile):
    ltx = tiny("tiny_ltxv")
    with pytest.raises(sc.core.ProfileError, match="latent channels"):
        patched(sc, ltx, wan_profile)
    other = sc.core.SensitivityProfile(sigmas=wan_profile.sigmas, alpha_x=wan_profile.alpha_x, alpha_t=wan_profile.alpha_t,
                                       metadata=dict(wan_profile.metadata, fingerprint={"arch": "0" * 16, "weights": "x"}))
    with pytest.raises(sc.core.ProfileError, match="different model architecture"):
        patched(sc, wan, other)
    with pytest.raises(ValueError, match="eps_main"):
        patched(sc, wan, wan_profile, eps=-0.1, eps_start=0.1)
    with pytest.raises(ValueError, match="max_consecutive"):
        patched(sc, wan, wan_profile, k=-1)
    with pytest.raises(ValueError, match="learning_runs"):     # no profile = learn mode (tests/test_learn.py)
        sc.apply.apply_sencache(wan, None, settings(sc), learning_runs=0)


def test_sigma_outside_profile_and_nonfinite_cache_are_computed(sc, wan, conds, wan_profile, caplog):
    low_only = sc.core.SensitivityProfile(sigmas=[0.1, 0.3], alpha_x=[0.1, 0.1], alpha_t=[0.1, 0.1],
                                          metadata=dict(wan_profile.metadata))
    m, holder = patched(sc, wan, low_only, eps=10.0, k=10)
    ref = sampling.sample(wan, *conds, sampling.wan_latent(), seed=1)
    assert torch.equal(sampling.sample(m, *conds, sampling.wan_latent(), seed=1), ref)   # safe fallback: compute
    tr = holder.last_trace
    assert tr.reused == 0 and [s.reason for s in tr.steps[1:-1]] == ["sigma_outside_profile"] * 6
    assert "outside the profile" in tr.warnings[0] and "outside the profile" in caplog.text

    m, holder = patched(sc, wan, wan_profile, eps=10.0, k=10)
    n = {"i": 0}

    def nan_at_first(executor, *args, **kwargs):   # the model returns NaN at its first evaluation
        out = executor(*args, **kwargs)
        n["i"] += 1
        return out * float("nan") if n["i"] == 1 else out
    m.add_wrapper_with_key("diffusion_model", "zz_test_nan", nan_at_first)
    sampling.sample(m, *conds, sampling.wan_latent(), seed=1)
    tr = holder.last_trace
    assert tr.steps[1].reason == "cache_invalid" and not tr.steps[1].reuse


def test_profile_save_load_nodes_and_path_safety(sc, host, wan_profile, comfy_base):
    import folder_paths
    name = sc.profiles.save(wan_profile, "tests/wan")
    assert name.startswith("tests/wan_") and name in folder_paths.get_filename_list("sencache")
    loaded = sc.profiles.load(name)
    assert np.array_equal(loaded.alpha_x, wan_profile.alpha_x) and loaded.metadata["fingerprint"] == wan_profile.metadata["fingerprint"]
    for bad in ("../../etc/passwd", "/etc/passwd", "tests/../../x.safetensors"):
        with pytest.raises(sc.core.ProfileError, match="invalid profile name"):
            sc.profiles.load(bad)
    with pytest.raises(sc.core.ProfileError, match="not found"):
        sc.profiles.load("missing.safetensors")
    with pytest.raises(sc.core.ProfileError, match="invalid filename prefix"):
        sc.profiles.save(wan_profile, "../escape")
    # through the node classes as ComfyUI executes them
    LoadProfile = host.NODE_CLASS_MAPPINGS["SenCacheLoadProfile"]
    assert name in LoadProfile.INPUT_TYPES()["required"]["profile_name"][1]["options"]
    out = LoadProfile.execute(profile_name=name, npz_preset="auto")
    assert np.array_equal(out.args[0].alpha_t, wan_profile.alpha_t)


def test_budget_mode_derives_eps_for_a_target_speedup(sc, wan, conds, wan_profile):
    counts = {}
    for speed, k_in in ((1.0, 3), (2.0, 3), (2.5, 3), (2.51, 2)):
        m, holder = patched(sc, wan, wan_profile, eps=0.1, eps_start=0.05, k=k_in, target_speedup=speed)
        sampling.sample(m, *conds, sampling.wan_latent(), seed=21, steps=8)
        tr = holder.last_trace
        b = tr.config["budget"]
        assert b["target_computed"] == math.ceil(8 / speed) and b["simulated_computed"] <= b["target_computed"]
        assert tr.config["eps_start"] == pytest.approx(0.5 * tr.config["eps_main"])
        assert all(s.eps in (tr.config["eps_start"], tr.config["eps_main"]) for s in tr.steps)
        # K for the target: the smallest that can reach it (8 steps, first + final computed), whatever the K input
        # (which applies in ε mode; min evaluations over 8 steps for K = 0..3: 8, 5, 4, 3; targets 8, 4, 4, 4)
        assert b["max_consecutive"] == tr.config["max_consecutive"] == {1.0: 1, 2.0: 3, 2.5: 3, 2.51: 3}[speed]
        run = longest = 0
        for s in tr.steps:
            run = run + 1 if s.reuse else 0
            longest = max(longest, run)
        assert longest <= b["max_consecutive"]
        counts[speed] = tr.computed
    assert counts[1.0] == 8 and counts[2.5] <= counts[2.0] < 8


def test_strict_early_phase_only_with_cfg(sc, wan, conds, wan_profile):
    """ε_start holds in runs with an uncond pass; without CFG ε_main applies from the first step (budget mode too)."""
    lat = sampling.wan_latent()
    ms = wan.model.model_sampling
    switch = float(ms.percent_to_sigma(0.2))
    for cfg in (5.0, 1.0):
        m, holder = patched(sc, wan, wan_profile, eps=0.5, eps_start=0.0, k=2, reuse_mode="output")
        sampling.sample(m, *conds, lat, seed=5, steps=10, cfg=cfg)
        tr = holder.last_trace
        early = [s for s in tr.steps if s.sigma > switch]
        assert len(early) >= 2 and tr.config["guided"] == (cfg > 1)
        if cfg > 1:
            assert all(s.eps == 0.0 and not s.reuse for s in early)
        else:
            assert all(s.eps == 0.5 for s in tr.steps) and tr.config["eps_start"] == 0.5
        recompute_rule(tr, wan_profile, 0.0 if cfg > 1 else 0.5, 0.5, 2, switch, [tr.config["sample_sigmas"][-2]])
        m, holder = patched(sc, wan, wan_profile, eps=0.1, eps_start=0.02, k=3, target_speedup=2.0)
        sampling.sample(m, *conds, lat, seed=5, steps=10, cfg=cfg)
        tr, b = holder.last_trace, holder.last_trace.config["budget"]
        assert b["unguided_simulated_computed"] <= b["target_computed"] == 5
        want = (b["eps_start"], b["eps_main"]) if cfg > 1 else (b["unguided_eps_main"], b["unguided_eps_main"])
        assert (tr.config["eps_start"], tr.config["eps_main"]) == want
        assert all(s.eps in want for s in tr.steps)
    # extrapolating runs (output_extrapolated, no CFG) at ≤ 35 % of the steps: K ≥ 6 (sencache_core.budget.k_for_target)
    # (12 steps, target 4: the smallest K that reaches it is 5, as 0, 6, 11 are computed)
    for cfg, mode, k in ((1.0, "output_extrapolated", 6), (5.0, "output_extrapolated", 5), (1.0, "output", 5)):
        m, holder = patched(sc, wan, wan_profile, eps=0.1, eps_start=0.02, k=3, target_speedup=3.0, reuse_mode=mode)
        sampling.sample(m, *conds, lat, seed=5, steps=12, cfg=cfg)
        tr = holder.last_trace
        assert tr.config["max_consecutive"] == k and tr.config["budget"]["target_computed"] == 4
        assert max(len(r) for r in "".join("r" if s.reuse else "c" for s in tr.steps).split("c")) <= k


def test_output_extrapolated_applies_only_without_cfg(sc, wan, conds, wan_profile):
    lat = sampling.wan_latent()

    def run(mode, eps, cfg):
        m, holder = patched(sc, wan, wan_profile, eps=eps, k=2, reuse_mode=mode)
        return sampling.sample(m, *conds, lat, seed=5, cfg=cfg), holder.last_trace

    # with CFG: exactly plain output reuse (extrapolation is not applied)
    out, tr = run("output", 0.5, 5.0)
    assert tr.reused > 0 and torch.equal(run("output_extrapolated", 0.5, 5.0)[0], out)
    # without CFG: ε = 0 is bit-identical to the unpatched model ...
    assert torch.equal(run("output_extrapolated", 0.0, 1.0)[0], sampling.sample(wan, *conds, lat, seed=5, cfg=1.0))
    # ... and once two computed steps precede a reuse, the reused output is extrapolated (so the result differs)
    plain, tr_plain = run("output", 0.5, 1.0)
    extra, tr_extra = run("output_extrapolated", 0.5, 1.0)
    computed_before = [sum(not t.reuse for t in tr_plain.steps[:i]) for i, s in enumerate(tr_plain.steps) if s.reuse]
    assert computed_before and max(computed_before) >= 2
    assert torch.isfinite(extra).all() and not torch.equal(extra, plain)
    first = next(i for i, s in enumerate(tr_plain.steps) if s.reuse)
    assert [s.reuse for s in tr_extra.steps[:first + 1]] == [s.reuse for s in tr_plain.steps[:first + 1]]


@pytest.mark.parametrize("with_audio", [True, False])
def test_list_inputs_one_decision_for_all_parts(sc, wan_profile, with_audio):
    """LTX-2's call convention with a stand-in model: the diffusion model gets [video, audio] and returns
    [video, audio] (or gets [video] and returns the video tensor). One decision per evaluation covers every part,
    reuse returns every part in the form the model returned them, Δx is measured on the video part."""
    import comfy.patcher_extension as pe
    calls = []

    def av_forward(x, timestep, context, transformer_options={}, **kwargs):
        calls.append(len(x))
        v = x[0][:, :16] * 0.5 + timestep.view(-1, 1, 1, 1, 1) * 1e-3 + context.mean()
        return [v, x[1] * 0.25 + 1.0] if len(x) > 1 else v

    holder = sc.runtime.SenCacheHolder(wan_profile, settings(sc, eps=10.0, k=2, reuse_mode="output"), latent_channels=16)

    class MS:
        @staticmethod
        def percent_to_sigma(p):
            return 1.0 - p
    sigmas = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.0])
    run = sc.runtime.RunState(holder, MS, sigmas)
    outs, plain = [], []
    for s in sigmas[:-1]:
        run.begin_evaluation()
        x = [torch.full((2, 16, 2, 4, 4), float(s)), torch.full((2, 8, 5, 16), 3.0 * float(s))]
        x = x if with_audio else x[:1]
        to = {"sencache_run": run, "sigmas": s.view(1), "uuids": ["u", "c"], "cond_or_uncond": [1, 0]}
        args = (x, s.view(1).repeat(2) * 1000, torch.zeros(2, 3, 8))
        outs.append(pe.WrapperExecutor.new_executor(av_forward, [sc.runtime.diffusion_model_wrapper]).execute(*args, to))
        plain.append(av_forward(*args))
    tr = run.trace
    assert [s.reuse for s in tr.steps] == [False, True, True, False] and len(calls) == 2 + 4   # 2 computed + 4 plain
    assert tr.steps[1].dx == pytest.approx(0.2, rel=1e-6)        # the video part's change (the audio's is 0.6)
    for i in (1, 2):                                              # reused: step 0's output, every part, same form
        if with_audio:
            assert isinstance(outs[i], list) and len(outs[i]) == 2
            assert all(torch.equal(a, b) for a, b in zip(outs[i], plain[0]))
        else:
            assert torch.is_tensor(outs[i]) and torch.equal(outs[i], plain[0])
    for i in (0, 3):
        same = all(torch.equal(a, b) for a, b in zip(outs[i], plain[i])) if with_audio else torch.equal(outs[i], plain[i])
        assert same
