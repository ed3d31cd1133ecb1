"""Model families beyond the Wan 2.1 T2V most tests use, on the real host: Wan 2.2 TI2V 5B (ComfyUI class WAN22,
48-channel latent, per-frame timesteps when the first frame is given) and a model class SenCache does not list
(HunyuanVideo), which must be named in a clear message while the generic path still works."""
import logging

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
