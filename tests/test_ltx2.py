"""LTX-2 (ComfyUI class `LTXAV`, audio + video; ComfyUI 0.18 and later) against the real host: a tiny LTXAV
checkpoint built from ComfyUI's own class (devkit.tiny_ltxav), loaded through comfy.sd as the real file is, sampled
by the real sampler with a video latent (the diffusion model gets `[video]`, returns the video) and with a
video + audio latent (gets and returns `[video, audio]`). Skipped on older hosts, which have no LTXAV."""
import pathlib

import pytest
import torch

from conftest import needs_host
from devkit import sampling, tiny_ltxav

pytestmark = needs_host((0, 18), "LTX-2 is ComfyUI's LTXAV class")
STEPS, CFG = 6, 3.0


def settings(sc, eps=0.3, eps_start=None, k=3, **kw):
    return sc.runtime.SenCacheSettings(eps_start=eps if eps_start is None else eps_start, eps_main=eps, max_consecutive=k, **kw)


@pytest.fixture(scope="module")
def ltx2(host, comfy_base):
    import comfy.sd
    path = tiny_ltxav.write_checkpoint(pathlib.Path(comfy_base) / "models" / "diffusion_models")
    return comfy.sd.load_diffusion_model(str(path))


def latent(kind: str):
    return tiny_ltxav.video_latent() if kind == "video" else tiny_ltxav.av_latent()


def parts(out) -> list[torch.Tensor]:
    return list(out.unbind()) if getattr(out, "is_nested", False) else [out]


def same(a, b) -> bool:
    pa, pb = parts(a), parts(b)
    return len(pa) == len(pb) and all(torch.equal(x, y) for x, y in zip(pa, pb))


class ForwardCounter:
    """Counts the diffusion model's real forward passes: a torch hook on its first transformer block, which runs
    only when the model does (the model's own __call__ also happens for evaluations SenCache reuses, as the
    DIFFUSION_MODEL wrapper sits inside its forward); records how many parts each call's input had."""
    def __init__(self, model):
        self.calls, self.inputs = 0, []
        dm = model.model.diffusion_model
        self.handles = [dm.transformer_blocks[0].register_forward_hook(self._block),
                        dm.register_forward_pre_hook(self._outer)]
        self._parts = None

    def _outer(self, module, args):
        self._parts = len(args[0]) if isinstance(args[0], (list, tuple)) else None

    def _block(self, module, args, out):
        self.calls += 1
        self.inputs.append(self._parts)

    def close(self):
        for h in self.handles:
            h.remove()


_PROFILES = {}


def profile(sc, ltx2, kind: str):
    """A calibrated profile per latent kind (the Calibrator on the tiny LTX-2), made once per session."""
    if kind not in _PROFILES:
        pos, neg = tiny_ltxav.conds(1)
        _, _PROFILES[kind] = sc.calibrate.calibrate(ltx2, pos, neg, {"samples": latent(kind)}, 0, STEPS, CFG, "euler",
                                                    "simple", 1)
    return _PROFILES[kind]


def test_tiny_ltxav_loads_as_ltx2_and_takes_lists(ltx2):
    """What the pack has to handle: the host's LTXAV diffusion model gets a list and returns a tensor (video) or a
    list (video + audio)."""
    assert type(ltx2.model).__name__ == "LTXAV"
    assert ltx2.model.latent_format.latent_channels == 128
    pos, neg = tiny_ltxav.conds(1)
    seen = []

    def spy(executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        seen.append((len(args[0]), type(out).__name__))
        return out
    m = ltx2.clone()
    m.add_wrapper_with_key("diffusion_model", "test_spy", spy)
    v = sampling.sample(m, pos, neg, latent("video"), seed=1, steps=2, cfg=CFG)
    av = sampling.sample(m, pos, neg, latent("av"), seed=1, steps=2, cfg=CFG)
    assert v.shape == (1, 128, 2, 4, 4) and [p.shape for p in av.unbind()] == [(1, 128, 2, 4, 4), (1, 8, 5, 16)]
    assert seen == [(1, "Tensor")] * 2 + [(2, "list")] * 2


@pytest.mark.parametrize("kind", ["video", "av"])
def test_eps_zero_is_bit_identical(sc, ltx2, kind):
    pos, neg = tiny_ltxav.conds(2)
    ref = sampling.sample(ltx2, pos, neg, latent(kind), seed=3, steps=STEPS, cfg=CFG)
    m, holder = sc.apply.apply_sencache(ltx2, profile(sc, ltx2, kind), settings(sc, eps=0.0))
    out = sampling.sample(m, pos, neg, latent(kind), seed=3, steps=STEPS, cfg=CFG)
    assert same(out, ref)
    assert holder.last_trace.computed == STEPS and holder.last_trace.reused == 0


@pytest.mark.parametrize("kind", ["video", "av"])
def test_reuse_covers_every_part_together(sc, ltx2, kind):
    """With a generous ε evaluations are reused; a reused evaluation skips the model for all parts (no forward
    pass at all), a computed one runs it on all parts; the output stays finite with the host's shapes."""
    pos, neg = tiny_ltxav.conds(2)
    ref = sampling.sample(ltx2, pos, neg, latent(kind), seed=3, steps=STEPS, cfg=CFG)
    m, holder = sc.apply.apply_sencache(ltx2, profile(sc, ltx2, kind), settings(sc, eps=50.0, k=2))
    counter = ForwardCounter(m)
    try:
        out = sampling.sample(m, pos, neg, latent(kind), seed=3, steps=STEPS, cfg=CFG)
    finally:
        counter.close()
    tr = holder.last_trace
    assert tr.reused > 0 and tr.computed + tr.reused == STEPS
    assert counter.calls == tr.computed                  # cond + uncond batched: one forward per computed step
    assert set(counter.inputs) == {1 if kind == "video" else 2}
    assert [p.shape for p in parts(out)] == [p.shape for p in parts(ref)]
    assert all(torch.isfinite(p).all() for p in parts(out)) and not same(out, ref)


def test_calibrator_node_then_sencache_node_then_sampler(sc, host, ltx2):
    """The graph Calibrator → SenCache → KSampler through the node classes as ComfyUI executes them."""
    pos, neg = tiny_ltxav.conds(4)
    Cal = host.NODE_CLASS_MAPPINGS["SenCacheCalibrator"]
    Apply = host.NODE_CLASS_MAPPINGS["SenCacheApply"]
    KSampler = host.NODE_CLASS_MAPPINGS["KSampler"]
    lat = {"samples": tiny_ltxav.av_latent()}
    with torch.inference_mode():
        cal = Cal.execute(model=ltx2, positive=pos, negative=neg, latent_image=lat, seed=0, steps=STEPS, cfg=CFG,
                          sampler_name="euler", scheduler="simple", runs=1, denoise=1.0, save_as="")
        prof = cal.args[1]
        assert prof.metadata["model_class"] == "LTXAV" and prof.metadata["latent_channels"] == 128
        patched = Apply.execute(model=ltx2, profile=prof, eps_main=50.0, eps_start=50.0, eps_switch_percent=0.2,
                                max_consecutive_reuse=2, reuse_start_percent=0.0, reuse_end_percent=1.0,
                                protect_final_step=True, use_high_percentile=False, reuse_mode="output").args[0]
        out = KSampler().sample(patched, 5, STEPS, CFG, "euler", "simple", pos, neg, lat, denoise=1.0)[0]["samples"]
    assert [p.shape for p in out.unbind()] == [(1, 128, 2, 4, 4), (1, 8, 5, 16)]
    holder = sc.runtime.find_holder(patched)
    assert holder.last_trace.reused > 0 and holder.last_trace.computed + holder.last_trace.reused == STEPS
    # the Visualizer reads the run's trace (never its tensors): it plots an LTX-2 run as any other
    vis = host.NODE_CLASS_MAPPINGS["SenCacheVisualizer"].execute(model=patched, latent={"samples": out})
    assert vis.args[0].shape[0] == 1 and f"computed {holder.last_trace.computed}/{STEPS}" in vis.args[1]
