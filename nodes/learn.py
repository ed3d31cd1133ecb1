"""Learn mode of the SenCache node: no profile connected, so the profile is learned from the user's own runs.

Per sampling run (`ProfileLearner.begin_run`, once when the run starts):
- the key is made: model fingerprint + a digest of the weight patches (LoRA) of the model being sampled, the latent
  shape of one sample, the sampler family and the estimator (sencache_core.learn);
- a learned profile with that key in models/sencache/learned/ that has `learning_runs` runs is used;
- otherwise this run is a learning run (`LearningRun`): every evaluation is computed and returned as is (the uncached
  result, bit for bit) and the sensitivities are measured on the way. The default estimator is the Sensitivity
  Calibrator's own on-trajectory one (nodes/measure.py: one extra evaluation per step, of σ_prev at the new
  latent, its output discarded), so a learning run costs up to twice a plain run. The "free" estimator uses no
  extra evaluation (sencache_core.learn.fit_profile on the pairs of computed evaluations); measured on the demo
  model it ranks the steps worse (results/learned), so it is not the node's. When the run finishes (`publish`) the
  profile is made from the stored and the new measurements and saved under the key. A stored profile of the same
  architecture, latent shape, sampler family and estimator whose weights or patches differ is a changed model:
  logged, and a new profile is learned under the new key (the old file stays, for when the model changes back).
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os

import torch

from ..sencache_core import ProfileError, RunTrace, SensitivityProfile, StepRecord, TrajectoryCalibrator, aggregate_runs
from ..sencache_core import learn as L
from ..sencache_core.samplers import sampler_family
from . import profiles
from .measure import CAL_KEY, CalibrationHolder
from .measure import measuring_diffusion_wrapper as calibrate_call
from .runtime import RunState, as_parts

log = logging.getLogger("SenCache")
SUBFOLDER = "learned"
LEARNING = "learning"      # the decision reason recorded for every evaluation of a learning run
# How a learning run measures: "trajectory" = the Sensitivity Calibrator's on-trajectory estimator (one extra
# evaluation per step, its output discarded); "free" = sencache_core.learn.fit_profile on the pairs of computed
# evaluations, no extra evaluation (it predicts the output change well but ranks the steps worse: bench.learned).
ESTIMATORS = ("trajectory", "free")
PATCH_SAMPLE = 64          # values sampled from each patch tensor for the patch digest (never a pass over weights)


# ---- the key's host parts -------------------------------------------------------------------------------------
def _digest_value(h, v, depth: int = 0) -> None:
    if depth > 6:
        return
    if isinstance(v, torch.Tensor):
        flat = v.detach().reshape(-1)
        step = max(1, flat.numel() // PATCH_SAMPLE)
        sample = flat[::step][:PATCH_SAMPLE].float().cpu()
        h.update(f"T{tuple(v.shape)}{v.dtype}".encode())
        h.update(sample.numpy().tobytes())
    elif isinstance(v, (list, tuple)):
        h.update(f"L{len(v)}".encode())
        for x in v:
            _digest_value(h, x, depth + 1)
    elif isinstance(v, (bool, int, float, str)) or v is None:
        h.update(repr(v).encode())
    elif callable(v) and not hasattr(v, "weights"):
        h.update(getattr(v, "__qualname__", type(v).__name__).encode())
    else:                                   # weight adapters (LoRA, LoHa, ...): their type and tensors
        h.update(type(v).__name__.encode())
        _digest_value(h, getattr(v, "weights", None), depth + 1)


def patches_digest(model_patcher) -> str:
    """Digest of the weight patches (LoRA and other weight adapters, with their strengths) on a ModelPatcher; ''
    when it has none. Samples a few values of each patch tensor."""
    patches = getattr(model_patcher, "patches", None) or {}
    if not patches:
        return ""
    h = hashlib.sha256()
    for key in sorted(patches):
        h.update(str(key).encode())
        _digest_value(h, patches[key])
    return h.hexdigest()[:16]


def sampler_name(sampler) -> str | None:
    """The sampling function's name of a ComfyUI sampler object (KSAMPLER: 'sample_euler', 'sample_unipc', ...)."""
    fn = getattr(sampler, "sampler_function", None)
    return getattr(fn, "__name__", None) or (type(sampler).__name__ if sampler is not None else None)


# ---- the store ------------------------------------------------------------------------------------------------
def store_dir() -> str:
    d = os.path.join(profiles.profile_dir(), SUBFOLDER)
    os.makedirs(d, exist_ok=True)
    return d


def stored_profiles() -> list[tuple[str, SensitivityProfile]]:
    """(file name relative to models/sencache, profile) of every readable learned profile; unreadable ones are logged
    and skipped."""
    out = []
    for path in sorted(glob.glob(os.path.join(store_dir(), "*.safetensors"))):
        try:
            p = SensitivityProfile.load(path)
        except ProfileError as e:
            log.warning("SenCache: skipping learned profile %s: %s", os.path.basename(path), e)
            continue
        if p.metadata.get("source") == L.SOURCE:
            out.append((f"{SUBFOLDER}/{os.path.basename(path)}", p))
    return out


def find(key: dict) -> tuple[tuple[str, SensitivityProfile] | None, list[str]]:
    """(the stored profile with this key or None, names of stored profiles that belong to a changed model)."""
    found, changed = None, []
    for name, p in stored_profiles():
        verdict = L.compare_keys(p.metadata.get("key"), key)
        if verdict == "match" and found is None:
            found = (name, p)
        elif verdict == "model_changed":
            changed.append(name)
    return found, changed


def save(profile: SensitivityProfile, model_class: str) -> str:
    """Write under the file name its key gives (replacing an earlier state of the same key, atomically)."""
    name = f"{L.file_stem(model_class, profile.metadata['key'])}.safetensors"
    path = os.path.join(store_dir(), name)
    profile.metadata["name"] = f"{SUBFOLDER}/{name}"
    tmp = path + ".tmp"
    profile.save(tmp)
    os.replace(tmp, path)
    return f"{SUBFOLDER}/{name}"


# ---- the learner ----------------------------------------------------------------------------------------------
class ProfileLearner:
    """One SenCache node's learn mode, plugged into its SenCacheHolder through the holder's extension points:
    run_setup = `begin_run` (choose this run's profile), run_class = `make_run` (a LearningRun or a plain RunState),
    the first publisher = `publish` (fit and save after a learning run)."""

    def __init__(self, facts: dict, learning_runs: int = 1, estimator: str = "trajectory",
                 max_gap: int = L.DEFAULT_MAX_GAP):
        if learning_runs < 1:
            raise ValueError(f"learning_runs must be ≥ 1 (got {learning_runs})")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS} (got {estimator!r})")
        self.facts = facts
        self.learning_runs = int(learning_runs)
        self.estimator = estimator
        self.max_gap = max_gap
        self.recorders: dict | None = None     # "free": window key -> PairRecorder, during a learning run only
        self.calibration: CalibrationHolder | None = None   # "trajectory": the Calibrator's state, likewise
        self.key: dict | None = None
        self.previous: list = []               # what the stored profile of this key already holds
        self.run_number = 0
        self.meta: dict = {}
        self.status = "no run yet"

    @property
    def learning(self) -> bool:
        return self.recorders is not None or self.calibration is not None

    # -- extension points ---------------------------------------------------------------------------------------
    def begin_run(self, holder, guider, args) -> None:
        """run_setup: the stored profile for this run (then holder.profile), or a learning run."""
        patcher = getattr(guider, "model_patcher", None)
        try:
            profile = self.profile_for_run(patcher, tuple(args[0].shape[1:]), args[2], getattr(guider, "cfg", None))
        except Exception as e:  # learn mode must never break a render: this run computes every step, learns nothing
            log.warning("SenCache: learn mode cannot handle this run (%s); computing every step", e)
            self.recorders = self.calibration = None
            self.status = f"not learning this run ({type(e).__name__})"
            return
        if profile is not None:
            holder.profile = profile
        elif self.calibration is not None:
            self.calibration.model_sampling = patcher.model.model_sampling

    def make_run(self, holder, model_sampling, sample_sigmas):
        """run_class: what begin_run chose (a run that computes every step whenever there is no profile)."""
        if self.learning or holder.profile is None:
            return LearningRun(holder, self, sample_sigmas)
        return RunState(holder, model_sampling, sample_sigmas)

    def publish(self, holder, trace) -> None:
        """Publisher (the first of the holder's): after a learning run, fit and save; the status goes into the
        trace for the publishers after it (log line, UI event) and the Visualizer."""
        if trace.config.get("other_cache"):    # another step cache answered model calls: never learn from such a run
            self.recorders = self.calibration = None
            self.status = "learned nothing from this run (another step cache is on the model)"
        if not self.learning:
            trace.config["profile_status"] = self.status
            return
        learned = self.finish_learning(trace.interrupted)
        if learned is not None:
            holder.profile = learned
        trace.config["profile_status"] = trace.config["no_reuse_reason"] = self.status

    # -- the steps ----------------------------------------------------------------------------------------------
    def profile_for_run(self, model_patcher, latent_shape, sampler, cfg: float | None = None) -> SensitivityProfile | None:
        """The stored learned profile for this run, or None: then this is a learning run (compute every evaluation)."""
        self.recorders = self.calibration = None
        key = L.learned_key(self.facts["fingerprint"], patches_digest(model_patcher), latent_shape,
                            sampler_family(sampler_name(sampler)), self.estimator)
        try:
            found, changed = find(key)
        except OSError as e:                  # an unreadable folder: learn (nothing is lost but the reuse)
            log.warning("SenCache: cannot read models/sencache/%s: %s", SUBFOLDER, e)
            found, changed = None, []
        runs = int(found[1].metadata.get("runs", 1)) if found else 0
        if found and runs >= self.learning_runs:
            self.status = f"using learned profile {found[0]}"
            log.info("SenCache: %s (%d learning run%s)", self.status, runs, "" if runs == 1 else "s")
            return found[1]
        if changed and not found:
            log.warning("SenCache: the stored learned profile %s of this architecture, latent size and sampler family "
                        "no longer matches this model (%s): the model changed or is another one; learning its own",
                        ", ".join(changed), _what_changed(changed, key))
        self.previous = []
        if found:
            try:
                self.previous = (L.stored_runs(found[1]) if self.estimator == "trajectory"
                                 else L.stored_observations(found[1]))
            except ProfileError as e:
                log.warning("SenCache: %s: %s; learning from this run only", found[0], e)
                runs = 0
        self.key = key
        self.run_number = runs + 1
        self.meta = {"key": key, "fingerprint": self.facts["fingerprint"], "model_class": self.facts["model_class"],
                     "latent_channels": self.facts["latent_channels"], "latent_shape": key["latent_shape"],
                     "sampler_family": key["sampler_family"], "sampler": sampler_name(sampler), "cfg": cfg,
                     "branch": "cond", "source": L.SOURCE}
        if self.estimator == "trajectory":
            self.calibration = CalibrationHolder(self.facts["latent_channels"])
            self.calibration.current = TrajectoryCalibrator()
        else:
            self.recorders = {}
        self.status = f"learning the profile (run {self.run_number} of {self.learning_runs})"
        log.info("SenCache: no profile connected: %s; every step is computed%s", self.status,
                 ", with one extra evaluation per step to measure the sensitivities" if self.calibration else "")
        return None

    def observe(self, sigma: float, x: torch.Tensor, out: torch.Tensor, names: list, window=None) -> None:
        """A computed evaluation: x (model input) and out of the batch rows named `names` ('cond', 'uncond' or a
        uuid per call part), of context window `window` (None: the whole latent). Records the cond rows' noisy-latent
        channels, as the Calibrator measures."""
        if self.recorders is None or "cond" not in names or out.shape[0] % len(names) or x.shape[0] != out.shape[0]:
            return
        per = out.shape[0] // len(names)
        i = names.index("cond")
        rows = slice(i * per, (i + 1) * per)
        ch = self.facts["latent_channels"]
        rec = self.recorders.get(window)
        if rec is None:
            rec = self.recorders[window] = L.PairRecorder(self.max_gap)
        rec.record(x[rows, :ch], sigma, out[rows, :ch])

    def finish_learning(self, interrupted: bool) -> SensitivityProfile | None:
        """End of a learning run: fit on the stored and the new measurements and save. Returns the profile."""
        recs, cal = self.recorders, self.calibration
        self.recorders = self.calibration = None
        if cal is not None:
            new = cal.current.finish()
        elif recs is not None:
            new = [o for r in recs.values() for o in r.finish()]
        else:
            return None
        if interrupted or not new:
            log.warning("SenCache: learning run %s; nothing saved", "interrupted" if interrupted else
                        "measured nothing (fewer than two evaluations at different σ)")
            self.status = "learning run " + ("interrupted" if interrupted else "gave nothing to learn")
            return None
        try:
            if cal is not None:
                runs = self.previous + [new]
                prof = aggregate_runs(runs, dict(self.meta, calibration_runs=L.samples_to_json(runs)))
            else:
                obs = self.previous + new
                prof = L.fit_profile(obs, dict(self.meta, runs=self.run_number,
                                               observations=L.observations_to_json(obs)))
            name = save(prof, self.facts["model_class"])
        except (ProfileError, OSError) as e:
            log.warning("SenCache: could not learn or save the profile: %s", e)
            self.status = f"learning failed: {e}"
            return None
        done = self.run_number >= self.learning_runs
        self.status = (f"learned profile {name} (run {self.run_number} of {self.learning_runs})"
                       + ("; the next runs reuse evaluations" if done else ""))
        log.info("SenCache: %s", self.status)
        return prof


class LearningRun(RunState):
    """A learning run (the run_class learn mode makes while learning): every evaluation is computed exactly as
    without SenCache (nothing decided, nothing cached, inputs and outputs untouched); each computed call is shown
    to the learner and recorded in the trace with reason LEARNING. Overrides RunState's model_call hook; there is
    no plan (no profile yet)."""

    def __init__(self, holder, learner: ProfileLearner, sample_sigmas: torch.Tensor):
        self.holder = holder
        self.learner = learner
        self.plan = None
        self.trace = RunTrace(config={**holder.settings.__dict__, "node_id": holder.node_id, "budget": None,
                                      "eps_main": None, "eps_start": None, "max_consecutive": None,
                                      "sample_sigmas": [float(s) for s in sample_sigmas.flatten().tolist()],
                                      "profile_range": None, "no_reuse_reason": learner.status,
                                      "profile_status": learner.status})
        self.channels = holder.latent_channels
        self.mode = holder.settings.reuse_mode
        self.streams: dict = {}
        self.eval_id = 0
        self._cuda_timings: list = []
        self._current: dict = {}          # window key -> (eval id, record, conds served)

    def model_call(self, executor, args, kwargs, to: dict):
        x0 = as_parts(args[0])[0][0]
        keys = list(to.get("uuids") or [None])
        cou = list(to.get("cond_or_uncond") or [])
        names = [("uncond" if c == 1 else "cond") if c in (0, 1) else str(u)
                 for u, c in zip(keys, cou + [None] * (len(keys) - len(cou)))]
        window = to.get("context_window")
        wkey = tuple(window.index_list) if window is not None and hasattr(window, "index_list") else None
        sigma = float(to["sigmas"].detach().flatten()[0])
        cur = self._current.get(wkey)
        if cur is None or cur[0] != self.eval_id or any(k in cur[2] for k in keys) or cur[1].sigma != sigma:
            record = StepRecord(len(self.trace.steps), sigma, False, LEARNING, None, 0.0, None, None,
                                window=None if wkey is None else [wkey[0], wkey[-1]])
            self.trace.steps.append(record)
            cur = self._current[wkey] = (self.eval_id, record, set())
        cur[2].update(keys)
        clock = self._clock_start(x0)
        if self.learner.calibration is not None:      # the Calibrator's own measurement of this call
            to[CAL_KEY] = self.learner.calibration       # (this call's transformer_options, a per-call copy)
            out = calibrate_call(executor, *args, **kwargs)
        else:
            out = executor(*args, **kwargs)
        self._clock_stop(cur[1], clock)
        cur[1].computed_conds.extend(names)
        if self.learner.recorders is not None:
            self.learner.observe(sigma, x0, as_parts(out)[0][0], names, wkey)
        return out

    def free(self) -> None:
        super().free()
        self._current.clear()


def _what_changed(changed: list[str], key: dict) -> str:
    for name, p in stored_profiles():
        if name in changed:
            k = p.metadata.get("key") or {}
            parts = [w for w, field in (("other weights", "weights"), ("other LoRA / weight patches", "patches"))
                     if k.get(field) != key[field]]
            return " and ".join(parts) or "other weights"
    return "other weights"
