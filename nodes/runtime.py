"""The SenCache wrappers: per-run state and the per-evaluation path, attached through keyed
comfy.patcher_extension wrappers only (never a copied forward, never model_function_wrapper).

OUTER_SAMPLE   : plans the run (sencache_core.planning) and makes a fresh RunState, published and freed in `finally`.
CALC_COND_BATCH: marks the start of one model evaluation (one sampler call, all conds).
DIFFUSION_MODEL: the first call of an evaluation asks the policy (sencache_core) once; every cond of that
                 evaluation follows the decision — batched or in separate calls.
Another step cache on the same model (nodes/step_caches.py: noticed at the start of the run by how it attaches, or
during the run when a call SenCache let through never reached the model): the run stands aside (RunState.stand_aside,
the one place that decides it): every model call from then on is left to the model, and the trace says why.

Where things live. The SenCacheHolder is a ModelPatcher attachment and is bound into the wrappers, both of which
every clone of the patched model shares as they are (whatever a host's clone() does to model_options); the
per-run RunState lives in the guider's own copy of transformer_options for the duration of one sampling run.

Models whose diffusion model takes and returns a list of tensors (LTX-2 `LTXAV`: [video] or [video, audio]) are
handled part by part: one decision per evaluation for all parts, every part cached and reused together, and Δx
measured on the first part (the video latent, the one with the model's latent channels and the one the
Calibrator measures the profile on; the audio part follows the video in an LTX-2 run and has no profile of its own).
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension

from ..sencache_core import PolicyState, RunTrace, SensitivityProfile, StepRecord
from ..sencache_core.norms import rms_diff_tensor
from ..sencache_core.planning import PlanSettings, RunPlan, plan_run
from ..sencache_core.policy import OUT_OF_PROFILE
from ..sencache_core.reuse import extrapolate
from . import step_caches

log = logging.getLogger("SenCache")
KEY = "sencache"            # wrapper key and attachment key of the holder
RUN_KEY = "sencache_run"    # transformer_options key of the per-run state
# output_extrapolated: extrapolate the output in σ from the last two computed evaluations, only in runs without an
# unconditional pass (CFG 1); with CFG it reuses the output as is (sencache_core/reuse.py says why)
REUSE_MODES = ("output", "output_minus_input", "output_extrapolated")

Publisher = Callable[["SenCacheHolder", RunTrace], None]
# ComfyUI's interrupt is an Exception subclass: every fallback (`except Exception`) in the pack lets it through first.
INTERRUPT = comfy.model_management.InterruptProcessingException


NODE_DEFAULTS = dict(eps_start=0.02, eps_main=0.1, max_consecutive=3)   # the SenCache node's input defaults


@dataclass
class SenCacheSettings:
    """What the SenCache node's inputs say, in the user's terms (percent of the schedule, not σ)."""
    eps_start: float
    eps_main: float
    max_consecutive: int
    eps_switch_percent: float = 0.2
    reuse_start_percent: float = 0.0
    reuse_end_percent: float = 1.0
    protect_final: bool = True
    high_percentile: bool = False
    reuse_mode: str = "output_extrapolated"
    target_speedup: float = 0.0      # > 0: derive ε per run from the profile for about steps/target evaluations
    placement: str = "threshold"     # budget mode: "threshold" (the rule with the derived ε) or "optimal" (the
                                     # computed steps chosen at once; sencache_core.placement)


class SenCacheHolder:
    """Lives on the patched model (shared by its clones); makes one run state per sampling run and keeps the
    last run's trace (`last_trace`) for the Visualizer.

    Extension points, given by whoever builds the holder (the SenCache node, a benchmark):
      publishers: callables (holder, trace) called in order after every sampling run, finished or interrupted
                  (the SenCache node passes the web UI's event sender). A failing publisher is logged and skipped.
      run_class:  the class made per sampling run: RunState or a subclass that overrides its documented hooks.
      run_setup:  a callable (holder, guider, outer_sample_args) called at the start of every sampling run, before
                  run_class, with what only the run knows: the ModelPatcher being sampled (its weight patches), the
                  noise (latent shape) and the sampler. Learn mode (nodes/learn.py) chooses the run's profile there.
    """

    def __init__(self, profile: SensitivityProfile, settings: SenCacheSettings, latent_channels: int,
                 node_id: str | None = None, publishers: Iterable[Publisher] = (), run_class: type | None = None,
                 run_setup: Callable | None = None):
        self.profile = profile
        self.settings = settings
        self.latent_channels = latent_channels
        self.node_id = node_id
        self.publishers: list[Publisher] = list(publishers)
        self.run_class = run_class or RunState
        self.run_setup = run_setup
        self.last_trace: RunTrace | None = None

    def plan_settings(self, model_sampling) -> PlanSettings:
        """The settings in σ: the schedule percentages converted with the model's own model_sampling."""
        s = self.settings
        p2s = lambda p: float(model_sampling.percent_to_sigma(p))
        return PlanSettings(s.eps_start, s.eps_main, s.max_consecutive, sigma_eps_switch=p2s(s.eps_switch_percent),
                            sigma_reuse_start=float("inf") if s.reuse_start_percent <= 0 else p2s(s.reuse_start_percent),
                            sigma_reuse_end=0.0 if s.reuse_end_percent >= 1 else p2s(s.reuse_end_percent),
                            protect_final=s.protect_final, high_percentile=s.high_percentile,
                            extrapolating=s.reuse_mode == "output_extrapolated", target_speedup=s.target_speedup,
                            placement=s.placement)

    def plan(self, model_sampling, sample_sigmas: torch.Tensor) -> RunPlan:
        return plan_run(self.plan_settings(model_sampling), self.profile, sample_sigmas.flatten().tolist())

    def publish(self, trace: RunTrace) -> None:
        self.last_trace = trace
        for publisher in list(self.publishers):
            try:
                publisher(self, trace)
            except INTERRUPT:
                raise
            except Exception as e:  # a UI problem never breaks a render
                log.warning("SenCache: trace publisher %r failed: %s", publisher, e)


def as_parts(v) -> tuple[list, bool]:
    """A model input or output as its list of tensors (one for most models; [video, audio] for LTX-2), and whether
    it came as a list."""
    if isinstance(v, (list, tuple)):
        return list(v), True
    return [v], False


@dataclass
class Stream:
    """Decision state of one stream (the whole latent, or one context window). Cache entries are tuples of tensors,
    one per part of the model output (see as_parts)."""
    policy_state: PolicyState = field(default_factory=PolicyState)
    x_ref: torch.Tensor | None = None
    cache: dict = field(default_factory=dict)        # cond key -> cached parts (output or output − input)
    cache_sigma: dict = field(default_factory=dict)  # cond key -> σ of its cached parts
    previous: dict = field(default_factory=dict)     # cond key -> (σ, parts) computed before them (extrapolation)
    unchecked: dict = field(default_factory=dict)    # cond key -> device bool: its cached parts are all finite
    out_is_list: bool = False                        # the model returned a list (reused outputs do the same)
    batch: tuple | None = None                       # (cond keys, parts) of the last computed call, whose rows
                                                     # the cache entries of those keys are (None once one is dropped)
    saw_uncond: bool = False
    eval_id: int = -1
    served: set = field(default_factory=set)
    record: StepRecord | None = None


@dataclass
class PendingCall:
    """A model call SenCache let through: what after_call needs to account it and refresh the cache."""
    stream: Stream
    record: StepRecord
    keys: list
    names: list
    clock: object


class RunState:
    """One sampling run. Subclasses (through SenCacheHolder(run_class=...)) may override these hooks:
      model_call(executor, args, kwargs, to) -> output   the whole DIFFUSION_MODEL step (decide, run or reuse);
      reused_output(stream, keys, sigma, parts) -> parts what a reused evaluation returns;
      store_computed(call, x_parts, out_parts)           refresh the cache from a computed call;
      keeps_previous(stream) -> bool                     whether the outputs before the cached ones are kept.
    `plan` (a sencache_core RunPlan), `trace`, `streams` and `mode` are public. `stood_aside` (None, or why) is set by
    stand_aside; from then on every call goes through pass_through, not model_call."""
    stood_aside: str | None = None
    probe: step_caches.Probe | None = None     # the run's innermost DIFFUSION_MODEL wrapper (outer_sample_wrapper)

    def __init__(self, holder: SenCacheHolder, model_sampling, sample_sigmas: torch.Tensor):
        self.holder = holder
        self.plan: RunPlan = holder.plan(model_sampling, sample_sigmas)
        self.channels = holder.latent_channels
        self.mode = holder.settings.reuse_mode
        p = self.plan.guided
        self.trace = RunTrace(config={**holder.settings.__dict__, "node_id": holder.node_id, "budget": self.plan.budget,
                                      "eps_main": p.eps_main, "eps_start": p.eps_start,
                                      "max_consecutive": p.max_consecutive, "sample_sigmas": list(self.plan.sigmas),
                                      "profile_range": list(holder.profile.sigma_range),
                                      "no_reuse_reason": self.plan.no_reuse_reason})
        self.streams: dict = {}
        self.eval_id = 0
        self._cuda_timings: list = []

    def begin_evaluation(self) -> None:
        self.eval_id += 1

    # ---- the per-evaluation path --------------------------------------------------------------------------
    def model_call(self, executor, args, kwargs, to: dict):
        reused, call = self.before_call(args[0], to)
        if call is None:
            return reused
        out = executor(*args, **kwargs)
        self.after_call(call, args[0], out)
        return out

    @torch.compiler.disable   # decisions stay outside a torch.compile'd graph; the model call itself does not
    def before_call(self, x, to: dict):
        """Decide (once per evaluation and stream). Returns (reused output, None) or (None, PendingCall)."""
        parts, _ = as_parts(x)
        keys = list(to.get("uuids") or [None])
        cou = list(to.get("cond_or_uncond") or [])
        names = [("uncond" if c == 1 else "cond") if c in (0, 1) else str(u)
                 for u, c in zip(keys, cou + [None] * (len(keys) - len(cou)))]
        wkey = self._window_key(to)
        stream = self.streams.get(wkey)
        if stream is None:
            stream = self.streams[wkey] = Stream()
        if "uncond" in names and not stream.saw_uncond:
            stream.saw_uncond = True
            if not self.keeps_previous(stream):
                stream.previous.clear()
        if stream.eval_id != self.eval_id or stream.record is None or any(k in stream.served for k in keys):
            self._decide(stream, parts, keys, to["sigmas"], wkey)
        record = stream.record
        stream.served.update(keys)
        if record.reuse and self._cache_usable(stream, keys, parts):
            out = self.reused_output(stream, keys, record.sigma, parts)
            record.reused_conds.extend(names)
            return (out if stream.out_is_list else out[0]), None
        return None, PendingCall(stream, record, keys, names, self._clock_start(parts[0]))

    @staticmethod
    def _window_key(to: dict):
        """The context window of this call (a tuple of frame indices), None for the whole latent."""
        window = to.get("context_window")
        return tuple(window.index_list) if window is not None and hasattr(window, "index_list") else None

    def _decide(self, stream: Stream, parts: list, keys: list, sigmas: torch.Tensor, wkey) -> None:
        """The decision of a new evaluation: one host transfer (σ, and Δx and the finiteness of the cached outputs
        where they can matter), the policy's answer, and the trace record."""
        stream.eval_id, stream.served = self.eval_id, set()
        policy = self.plan.policy(stream.saw_uncond)
        if self.trace.config.get("guided") is not stream.saw_uncond:    # the settings in effect, once known
            self.trace.config.update(guided=stream.saw_uncond, eps_main=policy.eps_main,
                                     eps_start=policy.eps_start, max_consecutive=policy.max_consecutive)
        caching = self.plan.no_reuse_reason is None
        x0 = parts[0]
        x_lat = x0[:x0.shape[0] // len(keys), :self.channels]
        ref = stream.x_ref
        if ref is not None and ref.shape != x_lat.shape:   # shape changed mid-run: start over, never reuse stale data
            stream.cache.clear()
            stream.previous.clear()
            stream.unchecked.clear()
            stream.batch = None
            stream.policy_state, ref = PolicyState(), None
        state = stream.policy_state
        want_dx = ref is not None and policy.needs_dx(state, None, False, self._cache_usable(stream, keys, parts))
        sigma, dx = self._measure(stream, sigmas, x_lat if want_dx else None, ref)
        cache_ok = self._cache_usable(stream, keys, parts) if caching else True   # nothing is cached otherwise
        decision = policy.decide(state, sigma, dx, self.plan.is_final(sigma), cache_ok)
        policy.commit(state, sigma, decision)
        if decision.reason == OUT_OF_PROFILE and not self.trace.warnings:
            lo, hi = self.holder.profile.sigma_range
            msg = (f"σ={sigma:.4g} lies outside the profile's measured range [{lo:.4g}, {hi:.4g}]: computing those "
                   "steps (no reuse). Calibrate with this schedule to cache them.")
            log.warning("SenCache: %s", msg)
            self.trace.warnings.append(msg)
        if not decision.reuse and caching:
            stream.x_ref = x_lat.detach().clone()
        stream.record = StepRecord(len(self.trace.steps), sigma, decision.reuse, decision.reason, decision.score,
                                   decision.eps, decision.dx, decision.dsigma,
                                   window=None if wkey is None else [wkey[0], wkey[-1]])
        self.trace.steps.append(stream.record)

    @staticmethod
    def _measure(stream: Stream, sigmas: torch.Tensor, x_lat: torch.Tensor | None, ref: torch.Tensor | None):
        """(σ, Δx or None) in one host transfer, which also resolves the finiteness of the cached outputs (checked
        here, lazily, instead of after every model call) and drops any that are not finite."""
        sigma_t = sigmas.detach().flatten()[0]
        flags = list(stream.unchecked.items())
        stream.unchecked.clear()
        if x_lat is None and not flags:
            return float(sigma_t), None
        device = x_lat.device if x_lat is not None else flags[0][1].device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        vals = [sigma_t.to(device=device, dtype=dtype)]
        if x_lat is not None:
            vals.append(rms_diff_tensor(x_lat, ref).to(dtype))
        vals += [f.to(device=device, dtype=dtype) for _, f in flags]
        out = torch.stack(vals).tolist()
        sigma = out[0]
        dx = out[1] if x_lat is not None else None
        for (k, _), ok in zip(flags, out[2:] if x_lat is not None else out[1:]):
            if not ok:                                # never reuse non-finite values: the next step recomputes
                stream.batch = None
                stream.cache.pop(k, None)
                stream.cache_sigma.pop(k, None)
                stream.previous.pop(k, None)
        return sigma, dx

    def keeps_previous(self, stream: Stream) -> bool:
        """The output before the cached one is needed only to extrapolate, i.e. in runs without CFG."""
        return self.mode == "output_extrapolated" and not stream.saw_uncond

    def reused_output(self, stream: Stream, keys: list, sigma: float, parts: list) -> list:
        """The reused output, part by part. Without extrapolation it is the cached tensor itself where it can be (the
        call has the conds of the computed one, or a single cond): ComfyUI reads model outputs, never writes them."""
        extra = self.keeps_previous(stream) and all(
            k in stream.previous and [t.shape for t in stream.previous[k][1]] == [t.shape for t in stream.cache[k]]
            for k in keys)
        whole = not extra and stream.batch is not None and stream.batch[0] == tuple(keys)
        out = []
        for j in range(len(stream.cache[keys[0]])):
            if whole:                                 # the cached batch as it is: no concatenation
                o = stream.batch[1][j]
            else:
                if extra:
                    pieces = [extrapolate(stream.previous[k][1][j], stream.previous[k][0], stream.cache[k][j],
                                          stream.cache_sigma[k], sigma) for k in keys]
                else:
                    pieces = [stream.cache[k][j] for k in keys]
                o = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
            if self.mode == "output_minus_input":
                o = o + parts[j][:, :o.shape[1]]
            out.append(o)
        return out

    @torch.compiler.disable
    def after_call(self, call: PendingCall, x, out) -> None:
        """Account the model call and refresh the cache of every cond it computed."""
        self._clock_stop(call.record, call.clock)
        call.record.computed_conds.extend(call.names)
        if self.plan.no_reuse_reason is not None:
            return
        x_parts, _ = as_parts(x)
        out_parts, out_is_list = as_parts(out)
        if len(out_parts) > len(x_parts) or any(o.shape[0] != p.shape[0] for o, p in zip(out_parts, x_parts)):
            return
        call.stream.out_is_list = out_is_list
        self.store_computed(call, x_parts[:len(out_parts)], out_parts)

    def store_computed(self, call: PendingCall, x_parts: list, out_parts: list) -> None:
        """One copy of the call's whole output per part (minus the input in output_minus_input mode); each cond's
        cache entry is a view of its rows, and the batch itself is kept for a reuse by a call with the same conds."""
        stream, n = call.stream, len(call.keys)
        keep = self.keeps_previous(stream)
        full = []
        for o, xp in zip(out_parts, x_parts):
            if self.mode == "output_minus_input":
                full.append((o - xp[:, :o.shape[1]]).detach())
            else:
                full.append(o.detach().clone())
        for i, k in enumerate(call.keys):
            entry = tuple(f[i * (f.shape[0] // n):(i + 1) * (f.shape[0] // n)] for f in full)
            if keep and k in stream.cache:
                stream.previous[k] = (stream.cache_sigma[k], stream.cache[k])
            stream.cache[k] = entry
            stream.cache_sigma[k] = call.record.sigma
            # finite iff the float32 sum is (NaN and ±inf propagate): a reduction, no mask, no host transfer here
            sums = [torch.isfinite(t.sum(dtype=torch.float32)) for t in entry]
            stream.unchecked[k] = sums[0] if len(sums) == 1 else torch.stack(sums).all()
        stream.batch = (tuple(call.keys), tuple(full))

    @staticmethod
    def _cache_usable(stream: Stream, keys: list, parts: list) -> bool:
        """Every cond of this call has cached parts of matching batch and spatial shape on the inputs' devices."""
        for k in keys:
            c = stream.cache.get(k)
            if c is None or len(c) > len(parts):
                return False
            for t, p in zip(c, parts):
                if t.shape[0] != p.shape[0] // len(keys) or t.shape[2:] != p.shape[2:] or t.device != p.device:
                    return False
        return True

    # ---- another step cache on the model ----------------------------------------------------------------
    def stand_aside(self, why: str) -> None:
        """What SenCache does when another step cache is on the model: from now on every model call is left to the
        model (nothing reused, nothing cached), the run's trace says why (the learner then stores nothing from it),
        and the log says so once."""
        if self.stood_aside is not None:
            return
        self.stood_aside = why
        self.trace.config["other_cache"] = why
        if not self.trace.reused:
            self.trace.config["no_reuse_reason"] = why
        self.trace.warnings.append(why)
        log.warning("SenCache: %s", why)

    def pass_through(self, executor, args, kwargs, to: dict):
        """A model call after stand_aside: run as it is, recorded as computed."""
        record, clock = self._pass_record(args[0], to)
        out = executor(*args, **kwargs)
        self._clock_stop(record, clock)
        return out

    @torch.compiler.disable
    def _pass_record(self, x, to: dict):
        keys = list(to.get("uuids") or [None])
        cou = list(to.get("cond_or_uncond") or [])
        names = [("uncond" if c == 1 else "cond") if c in (0, 1) else str(u)
                 for u, c in zip(keys, cou + [None] * (len(keys) - len(cou)))]
        wkey = self._window_key(to)
        passed = self.__dict__.setdefault("_passed", {})      # window key -> (eval id, record, conds served)
        cur = passed.get(wkey)
        if cur is None or cur[0] != self.eval_id or any(k in cur[2] for k in keys):
            record = StepRecord(len(self.trace.steps), float(to["sigmas"].detach().flatten()[0]), False,
                                step_caches.OTHER_CACHE, None, 0.0, None, None,
                                window=None if wkey is None else [wkey[0], wkey[-1]])
            self.trace.steps.append(record)
            cur = passed[wkey] = (self.eval_id, record, set())
        cur[2].update(keys)
        cur[1].computed_conds.extend(names)
        return cur[1], self._clock_start(as_parts(x)[0][0])

    def bypassed(self, why: str) -> None:
        """The run's model evaluations never reached SenCache's model wrapper: say so (log, trace, node, toast)."""
        self.trace.config["bypassed"] = why
        self.trace.config["no_reuse_reason"] = why
        self.trace.warnings.append(why)
        log.warning("SenCache: %s", why)

    @torch.compiler.disable
    def sender(self, executor) -> step_caches.Sent:
        """The executor model_call gets: it counts the calls sent on, to compare with the probe's count after."""
        return step_caches.Sent(executor, self.probe)

    @torch.compiler.disable
    def after_model_call(self, sent: step_caches.Sent) -> None:
        """After model_call: a call it sent on that did not reach the model was answered by another step cache."""
        if sent.unanswered_by_model():
            self.stand_aside(step_caches.UNKNOWN_MESSAGE)

    # ---- timing ---------------------------------------------------------------------------------------------
    def _clock_start(self, x: torch.Tensor):
        """Start timing a model call without stalling the GPU: CUDA events are resolved once, at the end of the run."""
        if x.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            return start
        return time.perf_counter()

    def _clock_stop(self, record: StepRecord, start) -> None:
        if isinstance(start, float):
            record.model_seconds += time.perf_counter() - start
        else:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._cuda_timings.append((record, start, end))

    def resolve_timings(self) -> None:
        if self._cuda_timings:
            self._cuda_timings[-1][2].synchronize()
            for record, start, end in self._cuda_timings:
                record.model_seconds += start.elapsed_time(end) / 1000.0
            self._cuda_timings.clear()

    def free(self) -> None:
        for s in self.streams.values():
            s.cache.clear()
            s.previous.clear()
            s.unchecked.clear()
            s.batch = None
            s.x_ref = None
        self.streams.clear()


class StandAsideRun(RunState):
    """A sampling run on a model that carries another step cache from the start (step_caches.attached): no plan,
    no profile needed; every model call is left to the model (RunState.pass_through)."""

    def __init__(self, holder: SenCacheHolder, sample_sigmas: torch.Tensor, why: str):
        self.holder = holder
        self.plan = None
        self.trace = RunTrace(config={**holder.settings.__dict__, "node_id": holder.node_id, "budget": None,
                                      "eps_main": None, "eps_start": None, "max_consecutive": None,
                                      "sample_sigmas": [float(s) for s in sample_sigmas.flatten().tolist()],
                                      "profile_range": None, "no_reuse_reason": None})
        self.channels = holder.latent_channels
        self.mode = holder.settings.reuse_mode
        self.streams: dict = {}
        self.eval_id = 0
        self._cuda_timings: list = []
        self.stand_aside(why)


# ---- wrappers -----------------------------------------------------------------------------------------
def find_transformer_options(args, kwargs) -> dict | None:
    """As core EasyCache does: the last positional dict, else the kwarg (Wan/LTXV: args[5]; CogVideoX: args[4])."""
    to = kwargs.get("transformer_options")
    if isinstance(to, dict):
        return to
    for a in reversed(args):
        if isinstance(a, dict):
            return a
    return None


def find_holder(model) -> SenCacheHolder | None:
    """The SenCache holder of a MODEL (a ModelPatcher) or of any clone of it, or None."""
    get = getattr(model, "get_attachment", None)
    return get(KEY) if get is not None else None


def outer_sample_wrapper(holder: SenCacheHolder, executor, *args, **kwargs):
    guider = executor.class_obj
    orig_model_options = guider.model_options
    run = None
    interrupted = True
    try:
        guider.model_options = comfy.model_patcher.create_model_options_clone(orig_model_options)
        to = guider.model_options.setdefault("transformer_options", {})
        others = step_caches.attached(to)
        if others:
            run = StandAsideRun(holder, args[3], step_caches.stacked_message(others))
        else:
            if holder.run_setup is not None:
                holder.run_setup(holder, guider, args)
            run = holder.run_class(holder, guider.model_patcher.model.model_sampling, args[3])
        run.probe = step_caches.add_probe(guider.model_options)
        to[RUN_KEY] = run
        out = executor(*args, **kwargs)
        interrupted = False
        if run.eval_id and not run.trace.steps:
            run.bypassed(step_caches.bypass_message(guider.model_options, run.eval_id))
        return out
    finally:
        guider.model_options = orig_model_options
        if run is not None:
            try:
                run.resolve_timings()
            except Exception as e:   # timing is bookkeeping: never let it fail a finished render
                log.warning("SenCache: could not read model-call timings: %s", e)
            run.free()
            holder.publish(run.trace.finish(interrupted=interrupted))


def calc_cond_batch_wrapper(executor, *args, **kwargs):
    model_options = args[-1] if isinstance(args[-1], dict) else kwargs.get("model_options", {})
    run = model_options.get("transformer_options", {}).get(RUN_KEY)
    if run is not None:
        run.begin_evaluation()
    return executor(*args, **kwargs)


def diffusion_model_wrapper(executor, *args, **kwargs):
    to = find_transformer_options(args, kwargs)
    run: RunState | None = to.get(RUN_KEY) if to else None
    if run is None or to.get("sigmas") is None:
        return executor(*args, **kwargs)
    if run.stood_aside is not None:
        return run.pass_through(executor, args, kwargs, to)
    sent = run.sender(executor)
    out = run.model_call(sent, args, kwargs, to)
    run.after_model_call(sent)
    return out


def attach(model, holder: SenCacheHolder):
    """Clone the ModelPatcher and attach SenCache. Returns the clone."""
    m = model.clone()
    if find_holder(m) is not None:
        log.warning("SenCache: this model already has SenCache applied; the new settings replace the old ones")
    m.set_attachments(KEY, holder)
    for wrapper_type, fn in ((comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, functools.partial(outer_sample_wrapper, holder)),
                             (comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, calc_cond_batch_wrapper),
                             (comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, diffusion_model_wrapper)):
        m.remove_wrappers_with_key(wrapper_type, KEY)
        m.add_wrapper_with_key(wrapper_type, KEY, fn)
    return m
