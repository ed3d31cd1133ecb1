"""Learn mode of the SenCache node: no profile connected, so the profile is learned from the user's own runs.

Per sampling run (`ProfileLearner.profile_for_run`, asked once when the run starts):
- the key is made: model fingerprint + a digest of the weight patches (LoRA) of the model being sampled, the latent
  shape of one sample and the sampler family (sencache_core.learn);
- a learned profile with that key in models/sencache/learned/ that has `learning_runs` runs is used;
- otherwise this run is a learning run: every evaluation is computed (the uncached result, bit for bit) and the pairs
  of computed evaluations are recorded (`observe`); when the run finishes (`publish`) the profile is fitted on the
  stored and the new observations and saved under the key. A stored profile of the same architecture, latent shape and
  sampler family whose weights or patches differ is a changed model: logged, and a new profile is learned under the
  new key (the old file stays, for when the model changes back).
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os

import torch

from ..sencache_core import ProfileError, SensitivityProfile
from ..sencache_core import learn as L
from . import profiles

log = logging.getLogger("SenCache")
SUBFOLDER = "learned"
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
    """One SenCache node's learn mode. `profile_for_run` at the start of each run; `observe` per evaluation and
    `publish` at its end (both no-ops in runs that use a stored profile)."""

    def __init__(self, facts: dict, learning_runs: int = 1, max_gap: int = L.DEFAULT_MAX_GAP):
        if learning_runs < 1:
            raise ValueError(f"learning_runs must be ≥ 1 (got {learning_runs})")
        self.facts = facts
        self.learning_runs = int(learning_runs)
        self.max_gap = max_gap
        self.recorder: L.PairRecorder | None = None
        self.key: dict | None = None
        self.previous: list[L.Observation] = []
        self.run_number = 0
        self.meta: dict = {}
        self.status = "no run yet"

    def profile_for_run(self, model_patcher, latent_shape, sampler, cfg: float | None = None) -> SensitivityProfile | None:
        """The stored learned profile for this run, or None: then this is a learning run (compute every evaluation)."""
        self.recorder = None
        key = L.learned_key(self.facts["fingerprint"], patches_digest(model_patcher), latent_shape,
                            L.sampler_family(sampler_name(sampler)))
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
            log.warning("SenCache: the stored learned profile %s no longer matches this model (%s); learning a new one",
                        ", ".join(changed), _what_changed(changed, key))
        self.previous = []
        if found:
            try:
                self.previous = L.stored_observations(found[1])
            except ProfileError as e:
                log.warning("SenCache: %s: %s; learning from this run only", found[0], e)
                runs = 0
        self.key = key
        self.run_number = runs + 1
        self.meta = {"key": key, "fingerprint": self.facts["fingerprint"], "model_class": self.facts["model_class"],
                     "latent_channels": self.facts["latent_channels"], "latent_shape": key["latent_shape"],
                     "sampler_family": key["sampler_family"], "sampler": sampler_name(sampler), "cfg": cfg,
                     "branch": "cond"}
        self.recorder = L.PairRecorder(self.max_gap)
        self.status = f"learning the profile (run {self.run_number} of {self.learning_runs})"
        log.info("SenCache: no profile connected: %s; every step is computed", self.status)
        return None

    @property
    def learning(self) -> bool:
        return self.recorder is not None

    def observe(self, sigma: float, x: torch.Tensor, out: torch.Tensor, names: list) -> None:
        """A computed evaluation: x (noisy-latent channels) and out of the batch rows named `names` ('cond',
        'uncond' or a uuid per call part). Records the cond rows only, as the Calibrator measures."""
        if self.recorder is None or "cond" not in names or out.shape[0] % len(names):
            return
        per = out.shape[0] // len(names)
        i = names.index("cond")
        rows = slice(i * per, (i + 1) * per)
        ch = self.facts["latent_channels"]
        self.recorder.record(x[rows, :ch], sigma, out[rows, :ch])

    def publish(self, interrupted: bool) -> SensitivityProfile | None:
        """End of a run: fit and save when this was a finished learning run. Returns the learned profile."""
        rec, self.recorder = self.recorder, None
        if rec is None:
            return None
        new = rec.finish()
        if interrupted or not new:
            log.warning("SenCache: learning run %s; nothing saved", "interrupted" if interrupted else
                        "gave no pairs of computed evaluations")
            self.status = "learning run " + ("interrupted" if interrupted else "gave nothing to learn")
            return None
        obs = self.previous + new
        meta = dict(self.meta, runs=self.run_number, observations=L.observations_to_json(obs))
        try:
            prof = L.fit_profile(obs, meta)
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


def _what_changed(changed: list[str], key: dict) -> str:
    for name, p in stored_profiles():
        if name in changed:
            k = p.metadata.get("key") or {}
            parts = [w for w, field in (("other weights", "weights"), ("other LoRA / weight patches", "patches"))
                     if k.get(field) != key[field]]
            return " and ".join(parts) or "other weights"
    return "other weights"
