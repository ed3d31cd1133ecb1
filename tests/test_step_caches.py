"""SenCache and another step cache on the same model (nodes/step_caches.py), in library mode on the tiny Wan.
The real caches (core EasyCache and LazyCache, in both orders) run through the server in tests/test_compat.py; here:
a cache SenCache does not know by name, placed after it, is noticed by what it does (a call SenCache let through
never reached the model), in learn mode and with a profile; and the transformer_options that KJNodes' former
TeaCache set are known by name."""
import importlib
import pathlib

import pytest
import torch

from devkit import sampling

LATENT = dict(frames=3, h=8, w=8)


@pytest.fixture(scope="module")
def step_caches(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.step_caches")


@pytest.fixture
def store(sc):
    d = pathlib.Path(sc.learn.store_dir())
    for f in d.glob("*"):
        f.unlink()
    yield d
    for f in d.glob("*"):
        f.unlink()


def settings(sc, **kw):
    return sc.runtime.SenCacheSettings(**{"eps_start": 0.02, "eps_main": 0.1, "max_consecutive": 3, **kw})


class UnknownCache:
    """A step cache under a key SenCache does not know: answers every second model call with its last output."""

    def __init__(self):
        self.calls = self.answered = 0
        self.last = None

    def __call__(self, executor, *args, **kwargs):
        self.calls += 1
        if self.calls % 2 == 0 and self.last is not None and self.last.shape == args[0].shape:
            self.answered += 1
            return self.last
        self.last = executor(*args, **kwargs)
        return self.last


def with_unknown_cache(model):
    m = model.clone()
    cache = UnknownCache()
    m.add_wrapper_with_key("diffusion_model", "some_other_step_cache", cache)     # after SenCache: inside its wrapper
    return m, cache


def test_unknown_cache_after_sencache_is_noticed_in_learn_mode_and_nothing_is_learned(sc, step_caches, wan, conds,
                                                                                      store):
    m, holder = sc.apply.apply_sencache(wan, None, settings(sc, target_speedup=2.0), node_id="7")
    m, cache = with_unknown_cache(m)
    sampling.sample(m, *conds, sampling.wan_latent(**LATENT), seed=3)
    t = holder.last_trace
    assert cache.answered > 0
    assert t.config["other_cache"] == step_caches.UNKNOWN_MESSAGE and step_caches.UNKNOWN_MESSAGE in t.warnings
    assert not list(store.glob("*.safetensors")), "a profile was learned from a run another cache thinned"
    assert t.config["profile_status"].startswith("learned nothing from this run")
    reasons = [s.reason for s in t.steps]
    assert len(reasons) == 8 and reasons[-1] == step_caches.OTHER_CACHE and t.reused == 0
    assert reasons.index(step_caches.OTHER_CACHE) <= 2             # noticed at the first call the cache answered
    payload = sc.plotting.compact(t, "7")
    assert payload["warning"] == step_caches.UNKNOWN_MESSAGE
    assert "nothing reused: " + step_caches.UNKNOWN_MESSAGE in sc.plotting.summary_line(t)
    # the same node on the model without that cache learns, as usual
    sampling.sample(sc.apply.apply_sencache(wan, None, settings(sc, target_speedup=2.0))[0], *conds,
                    sampling.wan_latent(**LATENT), seed=3)
    assert len(list(store.glob("*.safetensors"))) == 1


def test_unknown_cache_after_sencache_is_noticed_with_a_profile(sc, step_caches, wan, conds, wan_profile):
    m, holder = sc.apply.apply_sencache(wan, wan_profile, settings(sc, target_speedup=2.0), node_id="7")
    m, cache = with_unknown_cache(m)
    sampling.sample(m, *conds, sampling.wan_latent(**LATENT), seed=3)
    t = holder.last_trace
    assert cache.answered > 0 and t.config["other_cache"] == step_caches.UNKNOWN_MESSAGE
    first = [s.reason for s in t.steps].index(step_caches.OTHER_CACHE)
    assert all(s.reason == step_caches.OTHER_CACHE and not s.reuse for s in t.steps[first:])
    # without it, the same settings reuse (what SenCache gave up)
    m, holder = sc.apply.apply_sencache(wan, wan_profile, settings(sc, target_speedup=2.0))
    sampling.sample(m, *conds, sampling.wan_latent(**LATENT), seed=3)
    assert holder.last_trace.reused > 0 and "other_cache" not in holder.last_trace.config


def test_kjnodes_former_teacache_is_known_by_its_options(sc, step_caches, wan, conds, wan_profile, store):
    """KJNodes versions whose WanVideoTeaCacheKJ cached set these transformer_options (its node today returns the
    model unchanged): SenCache stands aside from the first step, in learn mode and with a profile."""
    tea = wan.clone()
    tea.model_options["transformer_options"].update(rel_l1_thresh=0.275, teacache_device=torch.device("cpu"),
                                                    coefficients=[])
    ref = sampling.sample(wan, *conds, sampling.wan_latent(**LATENT), seed=3)
    for profile in (None, wan_profile):
        m, holder = sc.apply.apply_sencache(tea, profile, settings(sc, target_speedup=2.0))
        assert torch.equal(sampling.sample(m, *conds, sampling.wan_latent(**LATENT), seed=3), ref)
        t = holder.last_trace
        assert t.computed == len(t.steps) == 8 and {s.reason for s in t.steps} == {step_caches.OTHER_CACHE}
        assert t.config["other_cache"].startswith(step_caches.TEACACHE_KJ + " is also on this model")
        assert t.config["no_reuse_reason"] == t.config["other_cache"]
    assert not list(store.glob("*.safetensors"))


def skip_transformer_options_guards(entries):
    """The guard filter ComfyUI 0.18.1's TorchCompileModel compiles with (comfy_extras/nodes_torch_compile.py)."""
    return [("transformer_options" not in entry.name) for entry in entries]


def test_a_model_compiled_before_sencache_was_added_is_said_by_name(sc, wan, conds, wan_profile, store, monkeypatch):
    """A whole model compiled with dynamo's guards on transformer_options off (ComfyUI 0.18.1's TorchCompileModel) that
    first ran without SenCache keeps that graph: SenCache's wrapper, which ComfyUI keeps in transformer_options, is
    never called. SenCache cannot change that, but it says so, naming TorchCompileModel, and learns nothing.
    PyTorch's attention (as with --use-pytorch-cross-attention, the GPU default): the whole model is one graph."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    import comfy.ldm.modules.attention
    import comfy.ldm.wan.model
    import torch._dynamo
    monkeypatch.setattr(comfy.ldm.wan.model, "optimized_attention", comfy.ldm.modules.attention.attention_pytorch)
    torch._dynamo.reset()
    cm = wan.clone()
    set_torch_compile_wrapper(cm, backend="eager", options={"guard_filter_fn": skip_transformer_options_guards})
    try:
        sampling.sample(cm, *conds, sampling.wan_latent(**LATENT), seed=3)       # the compiled model's first run
        for profile in (wan_profile, None):
            m, holder = sc.apply.apply_sencache(cm, profile, settings(sc, target_speedup=2.0), node_id="7")
            sampling.sample(m, *conds, sampling.wan_latent(**LATENT), seed=3)
            t = holder.last_trace
            assert not t.steps
            assert t.config["bypassed"].startswith("SenCache saw none of this run's 8 model evaluations")
            assert "TorchCompileModel" in t.config["bypassed"]
            assert sc.plotting.compact(t, "7")["warning"] == t.config["bypassed"]
        assert not list(store.glob("*.safetensors"))
    finally:
        torch._dynamo.reset()
