"""The SenCache wrappers: per-run state and the per-evaluation path, attached through keyed
comfy.patcher_extension wrappers only (never a copied forward, never model_function_wrapper).

OUTER_SAMPLE   : a fresh RunState per sampling run, published and freed in `finally`.
CALC_COND_BATCH: marks the start of one model evaluation (one sampler call, all conds).
DIFFUSION_MODEL: the first call of an evaluation asks the policy (sencache_core) once; every cond of that
                 evaluation follows the decision — batched or in separate calls.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import torch

import comfy.model_patcher
import comfy.patcher_extension

from ..sencache_core.policy import OUT_OF_PROFILE, Decision
from ..sencache_core.reuse import extrapolate
from ..sencache_core.budget import eps_for_budget, k_for_target, target_from_speedup
from ..sencache_core import (PolicyState, ReusePolicy, RunTrace, SensitivityProfile, StepRecord, rms_diff)

log = logging.getLogger("SenCache")
KEY = "sencache"            # wrapper key and transformer_options key of the holder
RUN_KEY = "sencache_run"    # transformer_options key of the per-run state
# output_extrapolated: extrapolate the output in σ from the last two computed evaluations, only in runs without an
# unconditional pass (CFG 1); with CFG it reuses the output as is (sencache_core/reuse.py says why)
REUSE_MODES = ("output", "output_minus_input", "output_extrapolated")
DEFAULT_LISTENERS: list = []  # listeners every new SenCacheHolder starts with (ui_events registers the UI event)
LEARNING = "learning"       # decision reason of every evaluation of a learning run (learn mode, nodes/learn.py)


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


class SenCacheHolder:
    """Lives on the patched model (shared by its clones); makes one RunState per sampling run and keeps the
    last run's trace for the Visualizer and the UI."""

    def __init__(self, profile: SensitivityProfile | None, settings: SenCacheSettings, latent_channels: int,
                 node_id: str | None = None, learner=None):
        self.profile = profile      # learn mode: the profile of the last run (None before the first learned one)
        self.learner = learner      # nodes.learn.ProfileLearner in learn mode (no profile connected), else None
        self.settings = settings
        self.latent_channels = latent_channels
        self.node_id = node_id
        self.last_trace: RunTrace | None = None
        self.listeners: list = list(DEFAULT_LISTENERS)  # callables(holder, trace) run after every run (UI events)

    def __deepcopy__(self, memo):
        # ModelPatcher.clone() deep-copies model_options; every clone of a patched model (LoRA, ModelSampling
        # nodes after SenCache, ...) must keep this one holder so traces reach the Visualizer and the UI.
        return self

    def make_policy(self, model_sampling) -> ReusePolicy:
        s = self.settings
        p2s = lambda p: float(model_sampling.percent_to_sigma(p))
        return ReusePolicy(self.profile, s.eps_start, s.eps_main, s.max_consecutive,
                           sigma_eps_switch=p2s(s.eps_switch_percent),
                           sigma_reuse_start=float("inf") if s.reuse_start_percent <= 0 else p2s(s.reuse_start_percent),
                           sigma_reuse_end=0.0 if s.reuse_end_percent >= 1 else p2s(s.reuse_end_percent),
                           protect_final=s.protect_final, high_percentile=s.high_percentile)

    def publish(self, trace: RunTrace) -> None:
        self.last_trace = trace
        log.info(trace.summary_line())
        for listener in list(self.listeners):
            try:
                listener(self, trace)
            except Exception as e:  # a UI problem never breaks a render
                log.warning("SenCache: trace listener failed: %s", e)


@dataclass
class _Stream:
    """Decision state of one stream (the whole latent, or one context window)."""
    policy_state: PolicyState = field(default_factory=PolicyState)
    x_ref: torch.Tensor | None = None
    cache: dict = field(default_factory=dict)      # cond key -> cached tensor (output or output − input)
    cache_sigma: dict = field(default_factory=dict)  # cond key -> σ of its cached tensor (output_extrapolated)
    previous: dict = field(default_factory=dict)   # cond key -> (σ, tensor) computed before it (output_extrapolated)
    saw_uncond: bool = False
    eval_id: int = -1
    served: set = field(default_factory=set)
    record: StepRecord | None = None


class RunState:
    def __init__(self, holder: SenCacheHolder, model_sampling, sample_sigmas: torch.Tensor, learning: bool = False):
        self.holder = holder
        self.learning = learning    # a learning run: every evaluation is computed, the learner observes them
        self.policy = None if learning else holder.make_policy(model_sampling)
        self.channels = holder.latent_channels
        self.mode = holder.settings.reuse_mode
        sig = [float(s) for s in sample_sigmas.flatten().tolist()]
        budget = None
        if learning:
            self.policy_unguided = None
        elif holder.settings.target_speedup > 0:
            s = holder.settings
            target = target_from_speedup(len(sig) - 1, s.target_speedup)
            ratio = s.eps_start / s.eps_main if s.eps_main > 0 else 0.2
            # K for the target, derived like ε (the K input applies in ε mode): the smallest K that can reach it;
            # when extrapolating (output_extrapolated without CFG) at least 6 at 1/3 of the steps or fewer
            # (sencache_core.budget.k_for_target says why)
            n = len(sig) - 1
            forced = {0} | ({n - 1} if s.protect_final else set())
            k = k_for_target(n, target, forced, False)
            k_u = k_for_target(n, target, forced, self.mode == "output_extrapolated")
            # ε for the target, once for a guided run (ε_start kept in its ratio) and once for an unguided one
            eps, simulated = eps_for_budget(replace(self.policy, max_consecutive=k), sig, target, ratio)
            unguided = replace(self.policy, max_consecutive=k_u).for_guidance(False)
            eps_u, simulated_u = eps_for_budget(unguided, sig, target, 1.0)
            self.policy = replace(self.policy, max_consecutive=k, eps_main=eps, eps_start=eps * ratio)
            self.policy_unguided = replace(unguided, eps_main=eps_u, eps_start=eps_u)
            budget = {"target_speedup": s.target_speedup, "target_computed": target, "simulated_computed": simulated,
                      "eps_main": eps, "eps_start": eps * ratio, "max_consecutive": k,
                      "unguided_eps_main": eps_u, "unguided_simulated_computed": simulated_u,
                      "unguided_max_consecutive": k_u}
        else:
            self.policy_unguided = self.policy.for_guidance(False)
        self.final_sigmas = [sig[i] for i in range(len(sig) - 1) if sig[i + 1] == 0.0 and sig[i] > 0]
        self.trace = RunTrace(config={**holder.settings.__dict__, "node_id": holder.node_id, "budget": budget,
                                      "eps_main": None if learning else self.policy.eps_main,
                                      "eps_start": None if learning else self.policy.eps_start,
                                      "max_consecutive": None if learning else self.policy.max_consecutive,
                                      "sample_sigmas": sig,
                                      "profile_range": None if learning else list(holder.profile.sigma_range),
                                      "profile_status": holder.learner.status if holder.learner else None})
        self.streams: dict = {}
        self.eval_id = 0
        self._pending = None
        self._cuda_timings: list = []

    def begin_evaluation(self) -> None:
        self.eval_id += 1

    def _is_final(self, sigma: float) -> bool:
        return any(abs(sigma - f) <= 1e-6 * max(1.0, f) for f in self.final_sigmas)

    @torch.compiler.disable   # decisions stay outside a torch.compile'd graph; the model call itself does not
    def before_call(self, x: torch.Tensor, transformer_options: dict) -> torch.Tensor | None:
        """Decide (once per evaluation and stream) and return the reused output, or None to compute."""
        sigma = float(transformer_options["sigmas"].flatten()[0])
        uuids = list(transformer_options.get("uuids") or [None])
        cou = list(transformer_options.get("cond_or_uncond") or [])
        names = [("uncond" if c == 1 else "cond") if c in (0, 1) else str(u)
                 for u, c in zip(uuids, cou + [None] * (len(uuids) - len(cou)))]
        window = transformer_options.get("context_window")
        wkey = tuple(window.index_list) if window is not None and hasattr(window, "index_list") else None
        stream = self.streams.setdefault(wkey, _Stream())
        keys, per = uuids, x.shape[0] // len(uuids)
        x_lat = x[:per, :self.channels]

        stream.saw_uncond = stream.saw_uncond or "uncond" in names
        new_eval = stream.eval_id != self.eval_id or stream.record is None or any(k in stream.served for k in keys) \
            or abs(stream.record.sigma - sigma) > 1e-9
        if new_eval:
            stream.eval_id, stream.served = self.eval_id, set()
            ref = stream.x_ref
            dx = rms_diff(x_lat, ref) if ref is not None and ref.shape == x_lat.shape and not self.learning else None
            if dx is None and ref is not None and not self.learning:   # shape changed mid-run: start over, never reuse stale data
                stream.cache.clear()
                stream.previous.clear()
                stream.policy_state = PolicyState()
            if self.learning:
                decision = Decision(False, LEARNING, None, 0.0, dx, None)
            else:
                policy = self.policy if stream.saw_uncond else self.policy_unguided
                if self.trace.config.get("guided") is not stream.saw_uncond:    # the settings in effect, once known
                    self.trace.config.update(guided=stream.saw_uncond, eps_main=policy.eps_main,
                                             eps_start=policy.eps_start, max_consecutive=policy.max_consecutive)
                decision = policy.decide(stream.policy_state, sigma, dx, self._is_final(sigma),
                                         self._cache_usable(stream, keys, x))
                policy.commit(stream.policy_state, sigma, decision)
            if decision.reason == OUT_OF_PROFILE and not self.trace.warnings:
                lo, hi = self.holder.profile.sigma_range
                msg = (f"σ={sigma:.4g} lies outside the profile's measured range [{lo:.4g}, {hi:.4g}]: computing those "
                       "steps (no reuse). Calibrate with this schedule to cache them.")
                log.warning("SenCache: %s", msg)
                self.trace.warnings.append(msg)
            if not decision.reuse and not self.learning:
                stream.x_ref = x_lat.detach().clone()
            stream.record = StepRecord(len(self.trace.steps), sigma, decision.reuse, decision.reason, decision.score,
                                       decision.eps, decision.dx, decision.dsigma,
                                       window=None if wkey is None else [wkey[0], wkey[-1]])
            self.trace.steps.append(stream.record)
        record = stream.record
        stream.served.update(keys)

        if record.reuse and self._cache_usable(stream, keys, x):
            if self.mode == "output_extrapolated" and not stream.saw_uncond and all(
                    k in stream.previous and stream.previous[k][1].shape == stream.cache[k].shape for k in keys):
                out = torch.cat([extrapolate(stream.previous[k][1], stream.previous[k][0], stream.cache[k],
                                             stream.cache_sigma[k], sigma) for k in keys], dim=0)
            else:
                out = torch.cat([stream.cache[k] for k in keys], dim=0)
            if self.mode == "output_minus_input":
                out = out + x[:, :out.shape[1]]
            record.reused_conds.extend(names)
            return out
        self._pending = (stream, record, keys, names, per, self._clock_start(x))
        return None

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

    @torch.compiler.disable
    def after_call(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """Account the model call and refresh the cache of every cond it computed (finite outputs only)."""
        stream, record, keys, names, per, start = self._pending
        self._pending = None
        self._clock_stop(record, start)
        record.computed_conds.extend(names)
        if out.shape[0] != x.shape[0]:
            return
        if self.learning:          # nothing is cached in a learning run: the learner keeps what it needs
            self.holder.learner.observe(record.sigma, x, out, names)
            return
        for i, k in enumerate(keys):
            part = out[i * per:(i + 1) * per]
            if self.mode == "output_minus_input":
                part = part - x[i * per:(i + 1) * per, :part.shape[1]]
            if bool(torch.isfinite(part).all()):
                if self.mode == "output_extrapolated" and k in stream.cache:
                    stream.previous[k] = (stream.cache_sigma[k], stream.cache[k])
                stream.cache[k] = part.detach().clone()
                stream.cache_sigma[k] = record.sigma
            else:                                     # never reuse non-finite values: the next step recomputes
                stream.cache.pop(k, None)
                stream.previous.pop(k, None)

    @staticmethod
    def _cache_usable(stream: _Stream, keys, x: torch.Tensor) -> bool:
        """Every cond of this call has a cached output of matching batch and spatial shape on x's device."""
        per = x.shape[0] // len(keys)
        for k in keys:
            c = stream.cache.get(k)
            if c is None or c.shape[0] != per or c.shape[2:] != x.shape[2:] or c.device != x.device:
                return False
        return True

    def free(self) -> None:
        for s in self.streams.values():
            s.cache.clear()
            s.previous.clear()
            s.x_ref = None
        self.streams.clear()


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


def outer_sample_wrapper(executor, *args, **kwargs):
    guider = executor.class_obj
    orig_model_options = guider.model_options
    run = None
    interrupted = True
    try:
        guider.model_options = comfy.model_patcher.create_model_options_clone(orig_model_options)
        to = guider.model_options["transformer_options"]
        holder: SenCacheHolder = to[KEY]
        sigmas = args[3]
        learning = False
        if holder.learner is not None:     # learn mode: a stored learned profile, or a learning run
            profile = holder.learner.profile_for_run(guider.model_patcher, tuple(args[0].shape[1:]), args[2],
                                                     getattr(guider, "cfg", None))
            learning = profile is None
            if profile is not None:
                holder.profile = profile
        run = RunState(holder, guider.model_patcher.model.model_sampling, sigmas, learning)
        to[RUN_KEY] = run
        out = executor(*args, **kwargs)
        interrupted = False
        return out
    finally:
        guider.model_options = orig_model_options
        if run is not None:
            try:
                run.resolve_timings()
            except Exception as e:   # timing is bookkeeping: never let it fail a finished render
                log.warning("SenCache: could not read model-call timings: %s", e)
            run.free()
            if run.learning:
                learned = run.holder.learner.publish(interrupted)
                if learned is not None:
                    run.holder.profile = learned
                run.trace.config["profile_status"] = run.holder.learner.status
            run.holder.publish(run.trace.finish(interrupted=interrupted))


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
    reused = run.before_call(args[0], to)
    if reused is not None:
        return reused
    out = executor(*args, **kwargs)
    run.after_call(args[0], out)
    return out


def attach(model, holder: SenCacheHolder):
    """Clone the ModelPatcher and attach SenCache. Returns the clone."""
    m = model.clone()
    to = m.model_options.setdefault("transformer_options", {})
    if KEY in to:
        log.warning("SenCache: this model already has SenCache applied; the new settings replace the old ones")
    to[KEY] = holder
    for wrapper_type, fn in ((comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, outer_sample_wrapper),
                             (comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, calc_cond_batch_wrapper),
                             (comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, diffusion_model_wrapper)):
        m.remove_wrappers_with_key(wrapper_type, KEY)
        m.add_wrapper_with_key(wrapper_type, KEY, fn)
    return m
