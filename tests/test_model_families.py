"""Model families beyond the Wan 2.1 T2V most tests use, on the real host: Wan 2.2 TI2V 5B (ComfyUI class WAN22,
48-channel latent, per-frame timesteps when the first frame is given) and a model class SenCache does not list
(HunyuanVideo), which must be named in a clear message while the generic path still works; and CogVideoX, which no
host we run has natively, through a stand-in that follows upstream core's class (devkit.tiny_cogvideox)."""
import logging

import numpy as np
import pytest
import torch

from devkit import sampling

STEPS = 6


def settings(sc, eps=0.3, k=3, **kw):
    return sc.runtime.SenCacheSettings(eps_start=eps, eps_main=eps, max_consecutive=k, **kw)


def sample_masked(model, pos, neg, latent, noise_mask, seed=1, steps=STEPS, cfg=4.0):
    """KSampler with a latent noise_mask (as Wan22ImageToVideoLatent makes: the given first frame is kept)."""
    import comfy.sample
    with torch.inference_mode():
        noise = comfy.sample.prepare_noise(latent, seed)
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", pos, neg, latent,
                                   noise_mask=noise_mask, disable_pbar=True, seed=seed)


def test_wan22_ti2v_5b(sc, tiny):
    """The tiny Wan 2.2 5B loads as WAN22 on every host that has it; text-to-video and image-to-video (first
    latent frame given: the model gets per-frame timesteps) are bit-identical at ε = 0 and reuse above it."""
    m = tiny("tiny_wan22_5b")
    assert type(m.model).__name__ == "WAN22" and m.model.latent_format.latent_channels == 48
    pos, neg = sampling.text_cond(1), sampling.text_cond(2)
    lat = torch.zeros(1, 48, 3, 8, 8)
    lat[:, :, 0] = torch.randn(1, 48, 8, 8, generator=torch.Generator().manual_seed(0))   # the given first frame
    mask = torch.ones(1, 1, 3, 8, 8)
    mask[:, :, 0] = 0.0
    _, prof = sc.calibrate.calibrate(m, pos, neg, {"samples": lat, "noise_mask": mask}, 0, STEPS, 4.0, "euler",
                                     "simple", 1)
    assert prof.metadata["latent_channels"] == 48 and prof.metadata["model_class"] == "WAN22"
    for noise_mask in (None, mask):
        ref = sample_masked(m, pos, neg, lat, noise_mask)
        p, holder = sc.apply.apply_sencache(m, prof, settings(sc, eps=0.0))
        assert torch.equal(sample_masked(p, pos, neg, lat, noise_mask), ref)
        p, holder = sc.apply.apply_sencache(m, prof, settings(sc, eps=5.0, k=2))
        timesteps = []
        p.add_wrapper_with_key("diffusion_model", "test_t", lambda ex, *a, **k: (timesteps.append(a[1].shape), ex(*a, **k))[1])
        out = sample_masked(p, pos, neg, lat, noise_mask)
        assert torch.isfinite(out).all() and holder.last_trace.reused > 0
        if noise_mask is not None:
            assert torch.allclose(out[:, :, 0], lat[:, :, 0], atol=1e-5)   # the given frame is kept (up to the
            #                                                               latent format's scale-in/out rounding)
            assert all(len(s) == 2 for s in timesteps)              # per-frame timesteps [batch, tokens]


@pytest.fixture(scope="module")
def hunyuan(tiny):
    return tiny("tiny_hunyuan_video")


def hv_conds():
    extra = {"pooled_output": torch.zeros(1, 768)}
    return sampling.text_cond(1, width=32, extra=extra), sampling.text_cond(2, width=32, extra=extra)


def test_unknown_model_class_is_named_and_the_generic_path_works(sc, host, hunyuan, caplog):
    assert type(hunyuan.model).__name__ == "HunyuanVideo"
    assert "HunyuanVideo" not in sc.model_info.KNOWN_MODEL_CLASSES
    pos, neg = hv_conds()
    lat = sampling.wan_latent()
    _, prof = sc.calibrate.calibrate(hunyuan, pos, neg, {"samples": lat}, 0, STEPS, 4.0, "euler", "simple", 1)
    Apply = host.NODE_CLASS_MAPPINGS["SenCacheApply"]
    args = dict(eps_start=0.0, eps_switch_percent=0.2, max_consecutive_reuse=2, reuse_start_percent=0.0,
                reuse_end_percent=1.0, protect_final_step=True, use_high_percentile=False, reuse_mode="output")
    with caplog.at_level(logging.WARNING, logger="SenCache"):
        out = Apply.execute(model=hunyuan, profile=prof, eps_main=0.0, **args)
    ui_text = " ".join(out.ui["text"])
    assert "model class HunyuanVideo" in ui_text and "generic path" in ui_text
    assert any("model class HunyuanVideo" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    ref = sampling.sample(hunyuan, pos, neg, lat, seed=2, steps=STEPS, cfg=4.0)
    assert torch.equal(sampling.sample(out.args[0], pos, neg, lat, seed=2, steps=STEPS, cfg=4.0), ref)
    m, holder = sc.apply.apply_sencache(hunyuan, prof, settings(sc, eps=5.0, k=2))
    assert torch.isfinite(sampling.sample(m, pos, neg, lat, seed=2, steps=STEPS, cfg=4.0)).all()
    assert holder.last_trace.reused > 0


def test_listed_model_class_gets_no_such_note(sc, host, wan, wan_profile):
    Apply = host.NODE_CLASS_MAPPINGS["SenCacheApply"]
    out = Apply.execute(model=wan, profile=wan_profile, eps_main=0.1, eps_start=0.02, eps_switch_percent=0.2,
                        max_consecutive_reuse=3, reuse_start_percent=0.0, reuse_end_percent=1.0,
                        protect_final_step=True, use_high_percentile=False, reuse_mode="output")
    assert not any("model class" in t for t in ((out.ui or {}).get("text") or []))


def cog_conds():
    return sampling.text_cond(1, width=32), sampling.text_cond(2, width=32)


@pytest.mark.parametrize("channels,ofs", [(16, False), (32, True)], ids=["t2v", "i2v_ofs"])
def test_cogvideox_stand_in_through_the_real_sampler(sc, host, channels, ofs):
    """No host we run has native CogVideoX: devkit.tiny_cogvideox follows upstream core's class (call convention,
    channels, integer timesteps, zero-terminal-SNR σ table, ofs). SenCache finds transformer_options at args[4],
    decides on the 16 noisy channels, is bit-identical at ε = 0 and reuses above it, under the real sampler."""
    import importlib
    from devkit import tiny_cogvideox
    core_profile = importlib.import_module(sc.core.__name__ + ".profile")
    m = tiny_cogvideox.build(channels, ofs)
    assert type(m.model).__name__ == "CogVideoX" and m.model.latent_format.latent_channels == 16
    table = m.model.model_sampling.sigmas.double().numpy()
    assert table[-1] == pytest.approx(4518.76, abs=0.01)
    assert np.allclose(core_profile._cogvideox_sigma(np.arange(1000.0)), table, rtol=1e-5)  # the npz conversion's σ
    pos, neg = cog_conds()
    lat = sampling.wan_latent()
    _, prof = sc.calibrate.calibrate(m, pos, neg, {"samples": lat}, 0, 8, 6.0, "euler", "simple", 1)
    assert prof.sigma_range[1] == pytest.approx(4518.76, abs=0.01) and prof.metadata["model_class"] == "CogVideoX"
    ref = sampling.sample(m, pos, neg, lat, seed=3, steps=8, cfg=6.0)
    p, holder = sc.apply.apply_sencache(m, prof, settings(sc, eps=0.0))
    assert torch.equal(sampling.sample(p, pos, neg, lat, seed=3, steps=8, cfg=6.0), ref)
    p, holder = sc.apply.apply_sencache(m, prof, settings(sc, eps=50.0, k=2))
    seen = []
    p.add_wrapper_with_key("diffusion_model", "test_spy", lambda ex, *a, **k: (
        seen.append((a[0].shape[1], isinstance(a[4], dict), float(a[1].flatten()[0]))), ex(*a, **k))[1])
    out = sampling.sample(p, pos, neg, lat, seed=3, steps=8, cfg=6.0)
    assert out.shape == lat.shape and torch.isfinite(out).all() and holder.last_trace.reused > 0
    assert {s[:2] for s in seen} == {(channels, True)} and seen[0][2] == 999.0      # integer DDPM steps from 999
    assert not holder.last_trace.warnings


@pytest.mark.parametrize("top_t", [999, 979])
def test_cogvideox_reference_npz_covers_the_whole_schedule(sc, tmp_path, caplog, top_t):
    """A reference `.npz` (CogVideoX, t in scheduler steps) covers ComfyUI's σ up to ≈ 4519: with t = 999 in the
    file directly, without it through the flat extension above a high-noise top (an INFO note, no warning)."""
    from devkit import tiny_cogvideox
    f = tmp_path / "sensitivity_cogvid.npz"
    t = np.linspace(top_t, 19, 50).round().astype(np.int64)
    np.savez(f, timesteps=t, J_x_norm=np.full(50, 1.0), J_t_norm=np.full(50, 1.0), sample_counts=np.full(50, 4))
    prof = sc.core.SensitivityProfile.load(f)
    m = tiny_cogvideox.build(16)
    pos, neg = cog_conds()
    p, holder = sc.apply.apply_sencache(m, prof, settings(sc, eps=0.5, k=3))
    with caplog.at_level(logging.INFO, logger="SenCache"):
        sampling.sample(p, pos, neg, sampling.wan_latent(), seed=3, steps=8, cfg=6.0)
    tr = holder.last_trace
    assert not tr.warnings and "sigma_outside_profile" not in {s.reason for s in tr.steps}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "outside" in r.getMessage()]
    notes = [r for r in caplog.records if "above the profile's top" in r.getMessage()]
    assert len(notes) == (0 if top_t == 999 else 1)
