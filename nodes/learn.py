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
  profile is made from the stored and the new measurements and saved under the key (`store`): under a file lock,
  with the stored file read again first, so ComfyUI processes sharing models/ keep each other's runs. A run that
  was interrupted or failed stores nothing. A profile that cannot be stored (read-only folder, disk full) is kept
  in memory for this process (`UNSTORED`) and used by later runs instead of learning again; that is said once.
  A stored profile of the same architecture, latent shape, sampler family and estimator whose weights or patches
  differ is a changed model: logged, and a new profile is learned under the new key (the old file stays, for when
  the model changes back).
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import time
from dataclasses import dataclass

import torch

from ..sencache_core import ProfileError, RunTrace, SensitivityProfile, StepRecord, TrajectoryCalibrator, aggregate_runs
from ..sencache_core import learn as L
from ..sencache_core.samplers import sampler_family
from . import profiles
from .measure import CAL_KEY, CalibrationHolder
from .measure import measuring_diffusion_wrapper as calibrate_call
from .runtime import INTERRUPT, RunState, as_parts

log = logging.getLogger("SenCache")
SUBFOLDER = "learned"
LEARNING = "learning"      # the decision reason recorded for every evaluation of a learning run
# How a learning run measures: "trajectory" = the Sensitivity Calibrator's on-trajectory estimator (one extra
# evaluation per step, its output discarded); "free" = sencache_core.learn.fit_profile on the pairs of computed
# evaluations, no extra evaluation (it predicts the output change well but ranks the steps worse: bench.learned).
ESTIMATORS = ("trajectory", "free")
PATCH_SAMPLE = 64          # values sampled from each patch tensor for the patch digest (never a pass over weights)
LOCK_FILE = ".lock"        # in models/sencache/learned: held while one process reads, merges and writes a profile
LOCK_WAIT = 10.0           # seconds to wait for another process's store; then this one writes without the lock


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
def store_dir(create: bool = True) -> str:
    """models/sencache/learned (made if missing, unless `create` is False: reading needs no folder)."""
    if not create:
        return os.path.join(profiles.profile_dir(create=False), SUBFOLDER)
    d = os.path.join(profiles.profile_dir(), SUBFOLDER)
    os.makedirs(d, exist_ok=True)
    return d


def stored_profiles() -> list[tuple[str, SensitivityProfile]]:
    """(file name relative to models/sencache, profile) of every readable learned profile; unreadable ones are logged
    and skipped."""
    out = []
    for path in sorted(glob.glob(os.path.join(store_dir(create=False), "*.safetensors"))):
        if not os.path.isfile(path):
            continue
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


@contextlib.contextmanager
def store_lock(folder: str | None):
    """Hold the store's lock (an OS file lock on `folder`/.lock: fcntl, msvcrt on Windows) while one process reads,
    merges and writes a learned profile, so two ComfyUI processes sharing models/ never lose each other's runs. The
    OS drops the lock when its process ends, so it never goes stale. Yields whether it is held: False when the lock
    file cannot be made (the write will fail and say why) or another process held it for LOCK_WAIT seconds."""
    fd = None
    if folder is not None:
        try:
            fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            fd = None
    held = False
    if fd is not None:
        deadline = time.monotonic() + LOCK_WAIT
        while not held:
            held = _try_lock(fd, True)
            if held or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not held:
            log.warning("SenCache: another process has held %s for %.0f s; storing without it",
                        os.path.join(folder, LOCK_FILE), LOCK_WAIT)
    try:
        yield held
    finally:
        if fd is not None:
            if held:
                _try_lock(fd, False)
            os.close(fd)


def _try_lock(fd: int, lock: bool) -> bool:
    try:
        import fcntl
        fcntl.flock(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if lock else fcntl.LOCK_UN)
        return True
    except ImportError:                       # Windows
        import msvcrt
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK if lock else msvcrt.LK_UNLCK, 1)
            return True
        except OSError:
            return False
    except OSError:
        return False


def fit_runs(estimator: str, meta: dict, stored: SensitivityProfile | None, runs: list) -> SensitivityProfile:
    """The learned profile of a stored profile's measurements (None: none) plus `runs` (each one learning run's:
    calibration samples for "trajectory", observations for "free"). ProfileError if the stored ones are unreadable."""
    if estimator == "trajectory":
        every = (L.stored_runs(stored) if stored is not None else []) + list(runs)
        return aggregate_runs(every, dict(meta, calibration_runs=L.samples_to_json(every)))
    obs = (L.stored_observations(stored) if stored is not None else []) + [o for r in runs for o in r]
    n = (stored_run_count(stored) if stored is not None else 0) + len(runs)
    return L.fit_profile(obs, dict(meta, runs=n, observations=L.observations_to_json(obs)))


def stored_run_count(profile: SensitivityProfile | None) -> int:
    return int(profile.metadata.get("runs", 1)) if profile is not None else 0


@dataclass
class Stored:
    """What `store` did: the profile (stored or not), its file name, the runs it holds, how many of them the stored
    file held when read again, and the error that kept it from the disk (None: stored)."""
    profile: SensitivityProfile
    name: str
    runs: int
    stored_runs: int
    error: OSError | None


def store(key: dict, model_class: str, estimator: str, meta: dict, runs: list) -> Stored:
    """Add `runs` to the stored profile of this key and write it, under the store's lock: the stored file is read
    again first (another process sharing models/ may have added runs since this run began), so every run's
    measurements are kept. Written atomically (a temporary file, then a rename). A failed write does not raise: the
    result holds the profile and the error. ProfileError if nothing can be fitted."""
    name = f"{L.file_stem(model_class, key)}.safetensors"
    meta = dict(meta, name=f"{SUBFOLDER}/{name}")
    try:
        folder, error = store_dir(), None
    except OSError as e:                      # models/sencache/learned cannot be made (read-only, a file in the way)
        folder, error = None, e
    with store_lock(folder):
        stored = None
        if folder is not None:
            stored = _read_stored(os.path.join(folder, name), key)
        try:
            profile = fit_runs(estimator, meta, stored, runs)
        except ProfileError as e:             # its measurements are unreadable: this run's replace them
            log.warning("SenCache: %s/%s: %s; its measurements are replaced", SUBFOLDER, name, e)
            stored = None
            profile = fit_runs(estimator, meta, None, runs)
        if error is None:
            try:
                _write(profile, folder, name)
            except OSError as e:
                error = e
    return Stored(profile, f"{SUBFOLDER}/{name}", stored_run_count(profile), stored_run_count(stored), error)


def _read_stored(path: str, key: dict) -> SensitivityProfile | None:
    if not os.path.exists(path):
        return None
    try:
        p = SensitivityProfile.load(path)
    except ProfileError:                      # said when the run began (stored_profiles); replaced now
        return None
    return p if L.compare_keys(p.metadata.get("key"), key) == "match" else None


def _write(profile: SensitivityProfile, folder: str, name: str) -> None:
    path = os.path.join(folder, name)
    tmp = profiles.temp_path(folder)
    try:
        profile.save(tmp)                     # (removes what it wrote if it fails)
    except OSError as e:                      # said of the file it was for, not of the temporary one
        raise OSError(e.errno, e.strerror, path) from e
    try:
        os.replace(tmp, path)
    except OSError:
        os.remove(tmp)
        raise


@dataclass
class Unstored:
    """This process's learning runs of one key that could not be stored (their measurements, and why, in brief)."""
    runs: list
    reason: str


# key id -> runs learned in this ComfyUI process but not stored (a failed write): later runs use them instead of
# learning again; a later learning run of the key stores them with its own
UNSTORED: dict[str, Unstored] = {}


# ---- the learner ----------------------------------------------------------------------------------------------
class ProfileLearner:
    """One SenCache node's learn mode, plugged into its SenCacheHolder through the holder's extension points:
    run_setup = `begin_run` (choose this run's profile), run_class = `make_run` (a LearningRun or a plain RunState),
    the first publisher = `publish` (fit and save after a learning run)."""

    def __init__(self, facts: dict, learning_runs: int = 1, estimator: str = "trajectory",
                 max_gap: int = L.DEFAULT_MAX_GAP):
        if not profiles.is_whole(learning_runs) or learning_runs < 1:
            raise ValueError(f"learning_runs must be a whole number ≥ 1 (got {learning_runs})")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS} (got {estimator!r})")
        self.facts = facts
        self.learning_runs = int(learning_runs)
        self.estimator = estimator
        self.max_gap = max_gap
        self.recorders: dict | None = None     # "free": window key -> PairRecorder, during a learning run only
        self.calibration: CalibrationHolder | None = None   # "trajectory": the Calibrator's state, likewise
        self.key: dict | None = None
        self.stored_seen = 0                   # learning runs the stored profile held when this run began
        self.problem: str | None = None        # what went wrong storing this run's profile (node text, toast)
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
        except INTERRUPT:
            raise
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
        if self.problem:
            trace.config["profile_problem"] = self.problem

    # -- the steps ----------------------------------------------------------------------------------------------
    def profile_for_run(self, model_patcher, latent_shape, sampler, cfg: float | None = None) -> SensitivityProfile | None:
        """The stored learned profile for this run (or the one kept in memory when it could not be stored), or None:
        then this is a learning run (compute every evaluation)."""
        self.recorders = self.calibration = None
        self.problem = None
        key = L.learned_key(self.facts["fingerprint"], patches_digest(model_patcher), latent_shape,
                            sampler_family(sampler_name(sampler)), self.estimator)
        try:
            found, changed = find(key)
        except OSError as e:                  # an unreadable folder: learn (nothing is lost but the reuse)
            log.warning("SenCache: cannot read models/sencache/%s: %s", SUBFOLDER, e)
            found, changed = None, []
        unstored = UNSTORED.get(L.key_id(key))
        runs = stored_run_count(found[1] if found else None)
        if found and runs >= self.learning_runs and unstored is None:
            self.status = f"using learned profile {found[0]}"
            log.info("SenCache: %s (%d learning run%s)", self.status, runs, "" if runs == 1 else "s")
            return found[1]
        if found:                             # its measurements must be readable to add to them
            try:
                L.stored_runs(found[1]) if self.estimator == "trajectory" else L.stored_observations(found[1])
            except ProfileError as e:
                log.warning("SenCache: %s: %s; learning from this run only", found[0], e)
                found, runs = None, 0
        self.meta = {"key": key, "fingerprint": self.facts["fingerprint"], "model_class": self.facts["model_class"],
                     "latent_channels": self.facts["latent_channels"], "latent_shape": key["latent_shape"],
                     "sampler_family": key["sampler_family"], "sampler": sampler_name(sampler), "cfg": cfg,
                     "branch": "cond", "source": L.SOURCE}
        if unstored is not None and runs + len(unstored.runs) >= self.learning_runs:
            self.status = f"using the learned profile kept in memory (not stored: {unstored.reason})"
            log.info("SenCache: %s", self.status)
            name = f"{SUBFOLDER}/{L.file_stem(self.facts['model_class'], key)}.safetensors"
            return fit_runs(self.estimator, dict(self.meta, name=name), found[1] if found else None, unstored.runs)
        if changed and not found:
            log.warning("SenCache: the stored learned profile %s of this architecture, latent size and sampler family "
                        "no longer matches this model (%s): the model changed or is another one; learning its own",
                        ", ".join(changed), _what_changed(changed, key))
        self.key = key
        self.stored_seen = runs
        self.run_number = runs + (len(unstored.runs) if unstored else 0) + 1
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
        kid = L.key_id(self.key)
        unstored = UNSTORED.get(kid)
        runs = (unstored.runs if unstored else []) + [new]
        try:
            done = store(self.key, self.facts["model_class"], self.estimator, self.meta, runs)
        except ProfileError as e:
            log.warning("SenCache: could not learn the profile: %s", e)
            self.status = f"learning failed: {e}"
            return None
        of = f"(run {done.runs} of {self.learning_runs})"
        if done.error is not None:
            reason = profiles.describe_os_error(done.error)          # what failed and where
            brief = done.error.strerror or reason
            UNSTORED[kid] = Unstored(runs, brief)
            self.problem = (f"learned the profile {of} but could not store it in models/sencache/{SUBFOLDER}: "
                            f"{reason}. It is kept in memory: later runs of this ComfyUI session use it instead of "
                            "learning again; it is learned again after a restart")
            self.status = f"learned the profile {of}, kept in memory: not stored ({brief})"
            log.warning("SenCache: %s", self.problem)
            return done.profile
        UNSTORED.pop(kid, None)
        others = done.stored_runs - self.stored_seen
        if others > 0:
            log.info("SenCache: another process stored %d learning run%s of this model meanwhile; kept: the profile "
                     "holds %d runs", others, "" if others == 1 else "s", done.runs)
        self.status = (f"learned profile {done.name} {of}"
                       + ("; the next runs reuse evaluations" if done.runs >= self.learning_runs else ""))
        log.info("SenCache: %s", self.status)
        return done.profile


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
