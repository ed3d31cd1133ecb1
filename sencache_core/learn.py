"""Learning a sensitivity profile from the user's own sampling runs: the pure parts of learn mode (nodes/learn.py).

- The storage key of a learned profile (`learned_key`, `compare_keys`, `file_stem`; the sampler family comes from
  `samplers.sampler_family`) and the
  measurements a stored profile keeps so later learning runs can add to them (`samples_to_json`: the Calibrator's
  on-trajectory samples, what learn mode measures by default; `observations_to_json`: the pairs below).
- The "free" estimator: a profile fitted to the pairs of computed evaluations of an ordinary run, with no extra model
  evaluation (`PairRecorder`, `fit_profile`), described next. Measured against a Calibrator profile at exactly
  matched evaluations on the demo model (bench/learned.py, results/learned/), it loses about 3.3–3.9 dB PSNR at 1/2
  to 1/4 of the evaluations with CFG 6, where the Calibrator's estimator run inside the learning run is within
  0.5 dB. The fit predicts the output change well; what it misses is where a reused output does harm: at the last,
  large steps (low σ) the output barely changes along the trajectory, so this profile reuses them, yet an output
  error there is multiplied by that step's large Δσ; the Calibrator's separately measured parts (which cancel along
  the trajectory) are large there and keep those steps computed. Learn mode therefore measures with the
  Calibrator's estimator by default and keeps this one as an option.

What a run shows. Between two computed evaluations i → j of a run (j after i, at most `max_gap` evaluations later)
we see the latent change ‖x_j − x_i‖, the noise-level change |σ_j − σ_i| and the output change ‖f_j − f_i‖ (RMS over
the noisy-latent channels, the conditional branch). Reusing f_i at step j costs exactly that output change (reuse
mode "output"), and the policy predicts it as

    S = α_x(σ_i)·‖x_j − x_i‖ + α_t(σ_i)·|σ_j − σ_i|            (sencache_core.policy)

with the reference i and cumulative differences, the same pairs (i, j) it meets when it decides. So the pairs of an
uncached run are direct samples of the quantity S stands for, at the gaps the policy uses (1 .. K+1).

Estimator (`fit_profile`). Per σ grid point (the observed reference σ values), a kernel-weighted non-negative least
squares fit of the per-unit-σ change,

    ‖Δf‖/|Δσ|  ≈  α_x · ‖Δx‖/|Δσ|  +  α_t

over the pairs whose reference σ lies near the grid point (Gaussian kernel in σ, its width `bandwidth` times the
local grid spacing: neighbours one grid step away weigh e^(−1/(2·bandwidth²))). Dividing by |Δσ| gives every pair
the same weight whatever its gap, so long gaps do not dominate.
Why least squares and not the upper envelope: the policy ranks steps by S against one ε; what decides the quality at
a given number of evaluations is that S ranks the steps like the true change does, and the expected change is what
least squares estimates. An envelope over one or two runs is set by a few extreme pairs. The profile's high
percentile arrays (use_high_percentile) carry the spread: α·q90 of the observed/predicted ratios near the grid point.
Why a small ridge: along one solver's trajectory ‖Δx‖ ≈ ‖dx/dσ‖·|Δσ|, so the two columns are nearly collinear and only
their sum along the trajectory is well determined. The ridge (in columns scaled to equal RMS, `ridge` times the
largest eigenvalue of the weighted Gram matrix) lets the data split α_x from α_t where the pairs tell them apart
(different gaps, seeds, prompts) and splits the prediction evenly between the two terms where they do not. The
split is then rescaled so the weighted mean prediction equals the weighted mean observation: the ridge only chooses
the split, never the size. (Calibrated profiles of the demo model have the two terms about equal along the
trajectory, docs/METHOD.md §3's on-trajectory estimator.)
`dx_per_sigma` (budget mode's simulation) is the kernel-weighted mean ‖Δx‖/|Δσ| of the gap-1 pairs.

Note on ε (free estimator). The Calibrator's α come from two separately measured parts of the output change, whose norms add up to at
least the norm of the total change (triangle inequality); the learned α predict the total change itself. At the same
ε a learned profile therefore reuses at least as often; budget mode (target_speedup) derives ε from the profile
either way.

Storage key (`learned_key`): the model fingerprint (architecture and weights digest, sencache_core.fingerprint),
a digest of the weight patches applied on top (LoRA), the latent shape of one sample, the sampler family
(`samplers.sampler_family`) and the estimator. A stored profile whose key differs only in weights or patches is a changed
model: relearn.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from .calibration import Sample
from .profile import ProfileError, SensitivityProfile

SOURCE = "learned"
DEFAULT_MAX_GAP = 4          # pairs up to 4 evaluations apart: reuse runs of up to K = 3 (the node's default)
DEFAULT_BANDWIDTH = 0.5      # kernel width in local grid spacings (neighbours weigh e^-2 ≈ 0.14)
DEFAULT_RIDGE = 1e-3         # relative to the largest eigenvalue of the scaled weighted Gram matrix
MAX_GRID_POINTS = 256
HIGH_PERCENTILE = 90.0
OBS_FIELDS = ("sigma_ref", "sigma", "dx", "df", "gap")

@dataclass(frozen=True)
class Observation:
    """One pair of computed evaluations i → j of an uncached run."""
    sigma_ref: float    # σ_i (the reference)
    sigma: float        # σ_j
    dx: float           # ‖x_j − x_i‖_rms (noisy-latent channels)
    df: float           # ‖f_j − f_i‖_rms (model output, conditional branch)
    gap: int            # j − i in evaluations

    @property
    def dsigma(self) -> float:
        return abs(self.sigma - self.sigma_ref)


class PairRecorder:
    """Feed every computed evaluation of one run in order (`record`); returns the new pairs (i, j) with
    1 ≤ j − i ≤ max_gap. A σ that does not decrease (a sampler that restarts, a second pass) starts a new window, so
    pairs never span it. Keeps max_gap detached copies of x and f."""

    def __init__(self, max_gap: int = DEFAULT_MAX_GAP):
        if max_gap < 1:
            raise ValueError(f"max_gap must be ≥ 1 (got {max_gap})")
        self.max_gap = max_gap
        self.window: list[tuple[float, torch.Tensor, torch.Tensor]] = []
        self.observations: list[Observation] = []

    def record(self, x: torch.Tensor, sigma: float, f: torch.Tensor) -> list[Observation]:
        sigma = float(sigma)
        if not math.isfinite(sigma):
            return []
        if self.window and not sigma < self.window[-1][0]:
            self.window.clear()
        new = []
        pairs = [(back, s0, x0, f0) for back, (s0, x0, f0) in enumerate(reversed(self.window), start=1)
                 if x0.shape == x.shape and f0.shape == f.shape]
        if pairs:       # every norm of this evaluation in one host transfer
            xf, ff = x.detach().float(), f.detach().float()
            norms = torch.stack([torch.stack([_rms_t(xf - x0.float()), _rms_t(ff - f0.float())])
                                 for _, _, x0, f0 in pairs]).tolist()
            for (back, s0, _, _), (dx, df) in zip(pairs, norms):
                if math.isfinite(dx) and math.isfinite(df):
                    new.append(Observation(s0, sigma, dx, df, back))
        self.observations.extend(new)
        self.window.append((sigma, x.detach().clone(), f.detach().clone()))
        del self.window[:-self.max_gap]
        return new

    def finish(self) -> list[Observation]:
        self.window.clear()
        return list(self.observations)


def _rms_t(v: torch.Tensor) -> torch.Tensor:
    """rms (sencache_core.norms) as a tensor, so several can be read at once."""
    return torch.linalg.vector_norm(v) / (v.numel() ** 0.5) if v.numel() else v.new_zeros(())


# ---- fitting ------------------------------------------------------------------------------------------------
def _grid(sig_ref: np.ndarray, max_points: int) -> np.ndarray:
    g = np.unique(np.round(sig_ref, 6))
    if g.size > max_points:
        g = np.unique(np.round(np.quantile(sig_ref, np.linspace(0, 1, max_points)), 6))
    return g


def _widths(grid: np.ndarray, bandwidth: float) -> np.ndarray:
    if grid.size == 1:
        return np.array([np.inf])
    d = np.diff(grid)
    left = np.concatenate([[d[0]], d])
    right = np.concatenate([d, [d[-1]]])
    return bandwidth * 0.5 * (left + right)


def _wquantile(v: np.ndarray, w: np.ndarray, q: float) -> float:
    order = np.argsort(v)
    v, w = v[order], w[order]
    c = np.cumsum(w)
    return float(np.interp(q / 100.0 * c[-1], c, v))


def solve_two(rate_x: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float = DEFAULT_RIDGE) -> tuple[float, float]:
    """Weighted non-negative fit y ≈ a·rate_x + b (a, b ≥ 0) with the module's ridge rule (docstring): the ridge picks
    the split where the columns are (nearly) collinear, and the result is rescaled so the weighted mean prediction
    equals the weighted mean of y."""
    sw = float(w.sum())
    if sw <= 0:
        raise ProfileError("no weight in this σ window")
    s1 = math.sqrt(float((w * rate_x ** 2).sum()) / sw)
    if s1 <= 0:                                   # the latent did not move: only α_t is seen
        return 0.0, max(float((w * y).sum()) / sw, 0.0)
    Z = np.stack([rate_x / s1, np.ones_like(rate_x)], axis=1)
    G = Z.T @ (w[:, None] * Z)
    r = Z.T @ (w * y)
    lam = ridge * float(np.linalg.eigvalsh(G).max())
    beta = np.linalg.solve(G + lam * np.eye(2), r)
    if np.any(beta < 0):                          # non-negative: the best one-term fit
        cands = []
        for k in (0, 1):
            b = np.zeros(2)
            b[k] = max(r[k] / (G[k, k] + lam), 0.0)
            res = y - Z @ b
            cands.append((float((w * res ** 2).sum()), b))
        beta = min(cands, key=lambda c: c[0])[1]
    pred = Z @ beta
    mp = float((w * pred).sum())
    if mp > 0:
        beta = beta * (float((w * y).sum()) / mp)
    return float(beta[0] / s1), float(beta[1])


def fit_profile(observations: list[Observation], metadata: dict | None = None, bandwidth: float = DEFAULT_BANDWIDTH,
                ridge: float = DEFAULT_RIDGE, max_points: int = MAX_GRID_POINTS,
                percentile: float = HIGH_PERCENTILE) -> SensitivityProfile:
    """The learned profile of these observations (module docstring). Raises ProfileError without usable pairs."""
    obs = [o for o in observations if o.dsigma > 0 and o.dx >= 0 and o.df >= 0
           and all(math.isfinite(v) for v in (o.sigma_ref, o.sigma, o.dx, o.df))]
    if not obs:
        raise ProfileError("no usable observations to learn a profile from (need at least two computed evaluations "
                           "at different σ in one run)")
    s_ref = np.array([o.sigma_ref for o in obs])
    ds = np.array([o.dsigma for o in obs])
    rate_x = np.array([o.dx for o in obs]) / ds
    y = np.array([o.df for o in obs]) / ds
    gap1 = np.array([o.gap == 1 for o in obs])
    grid = _grid(s_ref, max_points)
    width = _widths(grid, bandwidth)
    cols = {k: np.zeros(grid.size) for k in ("ax", "at", "axh", "ath", "sx", "st", "dx", "n")}
    for k, (g, h) in enumerate(zip(grid, width)):
        w = np.ones_like(s_ref) if not math.isfinite(h) else np.exp(-0.5 * ((s_ref - g) / h) ** 2)
        w = np.where(w < 1e-3, 0.0, w)
        ax, at = solve_two(rate_x, y, w, ridge)
        pred = ax * rate_x + at
        m = (w > 0) & (pred > 0)
        ratio, wm = y[m] / pred[m], w[m]
        q_hi = max(_wquantile(ratio, wm, percentile), 1.0) if ratio.size else 1.0
        spread = math.sqrt(float((wm * (ratio - 1.0) ** 2).sum()) / float(wm.sum())) if ratio.size else 0.0
        wd = w * gap1 if float((w * gap1).sum()) > 0 else w
        cols["ax"][k], cols["at"][k] = ax, at
        cols["axh"][k], cols["ath"][k] = ax * q_hi, at * q_hi
        cols["sx"][k], cols["st"][k] = ax * spread, at * spread
        cols["dx"][k] = float((wd * rate_x).sum()) / float(wd.sum())
        cols["n"][k] = float(w.sum())
    meta = dict(metadata or {})
    meta.update({"source": SOURCE, "high_percentile": percentile,
                 "estimator": {"kind": "kernel-weighted NNLS of |df|/|dsigma| on |dx|/|dsigma| and 1",
                               "bandwidth": bandwidth, "ridge": ridge,
                               "max_gap": int(max(o.gap for o in obs)), "pairs": len(obs)}})
    meta.setdefault("runs", 1)
    return SensitivityProfile(sigmas=grid, alpha_x=cols["ax"], alpha_t=cols["at"], alpha_x_hi=cols["axh"],
                              alpha_t_hi=cols["ath"], alpha_x_std=cols["sx"], alpha_t_std=cols["st"],
                              dx_per_sigma=cols["dx"], counts=cols["n"], metadata=meta)


# ---- observations in a profile's metadata (so later learning runs refit on everything) -----------------------
def observations_to_json(observations: list[Observation]) -> list[list]:
    return [[float(f"{o.sigma_ref:.9g}"), float(f"{o.sigma:.9g}"), float(f"{o.dx:.7g}"), float(f"{o.df:.7g}"),
             int(o.gap)] for o in observations]


def observations_from_json(rows) -> list[Observation]:
    out = []
    if not isinstance(rows, list):
        raise ProfileError("learned profile: 'observations' is not a list")
    for r in rows:
        if not (isinstance(r, (list, tuple)) and len(r) == len(OBS_FIELDS)):
            raise ProfileError(f"learned profile: malformed observation {r!r}")
        try:
            out.append(Observation(float(r[0]), float(r[1]), float(r[2]), float(r[3]), int(r[4])))
        except (TypeError, ValueError) as e:
            raise ProfileError(f"learned profile: malformed observation {r!r}: {e}") from e
    return out


def stored_observations(profile: SensitivityProfile) -> list[Observation]:
    return observations_from_json(profile.metadata.get("observations", []))


# ---- on-trajectory calibration samples in a profile's metadata (the learning run with one extra pass) -----------
def samples_to_json(runs: list[list[Sample]]) -> list[list[list[float]]]:
    """Per run, its calibration samples (sencache_core.calibration.Sample) as [σ, α_x, α_t, dx_per_sigma]."""
    return [[[float(f"{v:.9g}") for v in (s.sigma, s.alpha_x, s.alpha_t, s.dx_per_sigma)] for s in run] for run in runs]


def samples_from_json(rows) -> list[list[Sample]]:
    if not isinstance(rows, list):
        raise ProfileError("learned profile: 'calibration_runs' is not a list")
    runs = []
    for run in rows:
        if not isinstance(run, list):
            raise ProfileError("learned profile: a calibration run is not a list")
        out = []
        for r in run:
            if not (isinstance(r, (list, tuple)) and len(r) == 4):
                raise ProfileError(f"learned profile: malformed calibration sample {r!r}")
            try:
                v = [float(x) for x in r]
            except (TypeError, ValueError) as e:
                raise ProfileError(f"learned profile: malformed calibration sample {r!r}: {e}") from e
            if not all(math.isfinite(x) for x in v):
                raise ProfileError(f"learned profile: non-finite calibration sample {r!r}")
            out.append(Sample(*v))
        runs.append(out)
    return runs


def stored_runs(profile: SensitivityProfile) -> list[list[Sample]]:
    return samples_from_json(profile.metadata.get("calibration_runs", []))


# ---- keys ---------------------------------------------------------------------------------------------------
def learned_key(fingerprint: dict, patches: str, latent_shape, family: str, estimator: str = "trajectory") -> dict:
    """What a stored learned profile must match to be used. `patches` digests the weight patches (LoRA) on top of
    the fingerprinted weights ('' for none); `estimator` is how it was learned (nodes/learn.py ESTIMATORS)."""
    return {"arch": str(fingerprint.get("arch")), "weights": str(fingerprint.get("weights")), "patches": str(patches),
            "latent_shape": [int(v) for v in latent_shape], "sampler_family": str(family), "estimator": str(estimator)}


def key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def compare_keys(stored: dict | None, key: dict) -> str:
    """'match'; 'model_changed' (same architecture, latent shape, sampler family and estimator, other weights or
    patches: the profile no longer matches the model); or 'other' (another model, shape, family or estimator)."""
    if not isinstance(stored, dict):
        return "other"
    same_place = all(stored.get(k) == key[k] for k in ("arch", "latent_shape", "sampler_family", "estimator"))
    if not same_place:
        return "other"
    return "match" if all(stored.get(k) == key[k] for k in ("weights", "patches")) else "model_changed"


def file_stem(model_class: str, key: dict) -> str:
    shape = "x".join(str(v) for v in key["latent_shape"])
    safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in str(model_class))[:40] or "model"
    return f"{safe}_{shape}_{key['sampler_family']}_{key_id(key)}"
