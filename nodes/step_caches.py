"""Other step caches on the model SenCache samples: how SenCache notices them (it is never stacked on one silently).

A step cache answers some model calls from its cache instead of running the model. Two of them on one model compound
their errors, and a profile learned through another one describes that cache's skips, not the model. SenCache notices
another step cache at sampling time, in either order of the nodes:
- by how it attaches (`attached`, at the start of every sampling run, on the run's transformer_options, where
  ComfyUI has merged every wrapper of the model and its clones):
    EasyCache (ComfyUI core)   keyed wrappers "easycache" (OUTER_SAMPLE, CALC_COND_BATCH, DIFFUSION_MODEL)
    LazyCache (ComfyUI core)   keyed wrappers "lazycache" (OUTER_SAMPLE, PREDICT_NOISE)
                               (both keep their state at transformer_options["easycache"], whose `name` says which)
    WanVideoTeaCacheKJ         transformer_options "rel_l1_thresh" + "teacache_device": KJNodes versions whose
    (KJNodes)                  TeaCache swapped the model's forward_orig through a model-function wrapper. At
                               KJNodes 3f20054 the node is deprecated and returns the model unchanged: nothing to notice.
- by what it does (`Probe`): the innermost DIFFUSION_MODEL wrapper of each run counts the calls that reach the
  model; a call SenCache let through that never reached it was answered by something else on the way (any cache
  placed after SenCache, known or not).
What SenCache then does is decided in one place (nodes/runtime.py, RunState.stand_aside): it computes every model
call itself (reuses nothing) for the rest of the run, learns nothing from the run, and says why in the log, on the
node and in the toast.
A run whose model evaluations never reached SenCache's model wrapper at all (`bypass_message`; e.g. a whole model
compiled before SenCache was added, by a TorchCompileModel whose compiled graph does not re-check transformer_options)
is said so too (RunState.bypassed).
"""
from __future__ import annotations

import functools

import torch

import comfy.patcher_extension

PROBE_KEY = "sencache_probe"        # wrapper key of the probe (added per run, on the run's own model_options)
OTHER_CACHE = "other_step_cache"    # the decision reason of every evaluation SenCache leaves to the model then

# wrapper key -> the node users know
WRAPPER_KEYS = {"easycache": "EasyCache (ComfyUI core)", "lazycache": "LazyCache (ComfyUI core)"}
TEACACHE_KJ = "WanVideoTeaCacheKJ (KJNodes)"


def attached(transformer_options: dict) -> list[str]:
    """The other step caches a sampling run's transformer_options carry, by the names of their nodes."""
    to = transformer_options or {}
    found = []
    for kind in (to.get("wrappers") or {}).values():
        for key in kind:
            name = WRAPPER_KEYS.get(key)
            if name and name not in found:
                found.append(name)
    holder = to.get("easycache")
    if holder is not None and not found:          # an EasyCache-like holder whose wrappers go by another key
        found.append(f"{getattr(holder, 'name', type(holder).__name__)} (ComfyUI core)")
    if "rel_l1_thresh" in to and "teacache_device" in to:
        found.append(TEACACHE_KJ)
    return found


def stacked_message(names: list[str]) -> str:
    other = " and ".join(names)
    return (f"{other} {'is' if len(names) == 1 else 'are'} also on this model: two step caches compound their errors, "
            "so SenCache computed every step itself and learned nothing from this run. Keep one of them")


UNKNOWN_MESSAGE = ("a model call SenCache let through was answered without running the model (another step cache "
                   "after SenCache?): from there on SenCache computed every step itself, and it learned nothing from "
                   "this run. Keep one step cache")


def bypass_message(model_options: dict, evaluations: int) -> str:
    """Why a run's model evaluations never reached SenCache's model wrapper (RunState.bypassed), naming a compiled
    model when there is one."""
    msg = (f"SenCache saw none of this run's {evaluations} model evaluations: they ran without its wrapper, so nothing "
           "was cached or learned")
    if (model_options or {}).get("torch_compile_kwargs") is not None:
        msg += (". The model is compiled (TorchCompileModel): ComfyUI 0.18.1's TorchCompileModel compiles the whole "
                "model once and ignores wrappers added after the compiled model first ran, so restart ComfyUI with "
                "SenCache in the graph, or compile only the transformer blocks (e.g. KJNodes' "
                "TorchCompileModelWanVideoV2)")
    return msg


class Probe:
    """Counts the model calls that reached the model itself (`reached`)."""

    def __init__(self):
        self.reached = 0

    @torch.compiler.disable     # bookkeeping stays outside a torch.compile'd graph
    def count(self) -> None:
        self.reached += 1


def _probe_wrapper(probe: Probe, executor, *args, **kwargs):
    probe.count()
    return executor(*args, **kwargs)


def add_probe(model_options: dict) -> Probe:
    """A Probe as the innermost DIFFUSION_MODEL wrapper of these model_options (a sampling run's own copy)."""
    probe = Probe()
    comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, PROBE_KEY,
                                                 functools.partial(_probe_wrapper, probe), model_options,
                                                 is_model_options=True)
    return probe


class Sent:
    """A model-call executor that counts the calls sent on through it (`calls`), and the probe's count before them."""

    def __init__(self, executor, probe: Probe | None):
        self.executor = executor
        self.calls = 0
        self.probe = probe
        self.reached_before = probe.reached if probe is not None else 0

    def unanswered_by_model(self) -> bool:
        """Fewer calls reached the model than were sent on: something on the way answered the others."""
        return self.probe is not None and self.probe.reached - self.reached_before < self.calls

    @property
    def class_obj(self):
        return self.executor.class_obj

    @torch.compiler.disable
    def _count(self) -> None:
        self.calls += 1

    def __call__(self, *args, **kwargs):
        self._count()
        return self.executor(*args, **kwargs)
