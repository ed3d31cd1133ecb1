"""On-trajectory sensitivity calibration (docs/METHOD.md §3, our estimator).

For consecutive computed evaluations (x_k, σ_k), (x_{k+1}, σ_{k+1}) of a normal sampling run and one extra
evaluation f(x_{k+1}, σ_k):
    α_x(σ_k) = ‖f(x_{k+1}, σ_k) − f(x_k, σ_k)‖ / ‖x_{k+1} − x_k‖
    α_t(σ_k) = ‖f(x_{k+1}, σ_{k+1}) − f(x_{k+1}, σ_k)‖ / |σ_{k+1} − σ_k|
(norms RMS; the two output differences add up exactly to f(x_{k+1},σ_{k+1}) − f(x_k,σ_k)). Runs are
aggregated per σ: mean, standard deviation and a high percentile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .norms import rms_diff
from .profile import SensitivityProfile, ProfileError


@dataclass
class Sample:
    sigma: float
    alpha_x: float
    alpha_t: float
    dx_per_sigma: float


@dataclass
class TrajectoryCalibrator:
    """Collects one run's samples. The caller feeds every evaluation in order: `cross_sigma()` says at which
    σ the extra evaluation f(x, σ_prev) is needed (None for the first one), then `record(...)`."""
    samples: list[Sample] = field(default_factory=list)
    _prev: tuple[torch.Tensor, float, torch.Tensor] | None = None

    def cross_sigma(self) -> float | None:
        return None if self._prev is None else self._prev[1]

    def record(self, x: torch.Tensor, sigma: float, f: torch.Tensor, f_cross: torch.Tensor | None) -> Sample | None:
        """x, f: this evaluation's latent (noisy channels) and output; f_cross = f(x, σ_prev)."""
        sample = None
        if self._prev is not None and f_cross is not None:
            x0, s0, f0 = self._prev
            dx, ds = rms_diff(x, x0), abs(sigma - s0)
            if dx > 0 and ds > 0:
                sample = Sample(s0, rms_diff(f_cross, f0) / dx, rms_diff(f, f_cross) / ds, dx / ds)
                if all(math.isfinite(v) for v in (sample.alpha_x, sample.alpha_t, sample.dx_per_sigma)):
                    self.samples.append(sample)
                else:
                    sample = None
        self._prev = (x.detach().clone(), float(sigma), f.detach().clone())
        return sample

    def finish(self) -> list[Sample]:
        self._prev = None
        return self.samples


def aggregate_runs(runs: list[list[Sample]], metadata: dict, percentile: float = 90.0, sigma_decimals: int = 6) -> SensitivityProfile:
    """Per-σ mean / std / percentile over runs. Samples group by σ rounded to `sigma_decimals`."""
    groups: dict[float, list[Sample]] = {}
    for run in runs:
        for s in run:
            groups.setdefault(round(s.sigma, sigma_decimals), []).append(s)
    if not groups:
        raise ProfileError("calibration produced no samples (need at least two evaluations at different σ per run)")
    sig = np.array(sorted(groups))
    cols = {k: [] for k in ("ax", "at", "axh", "ath", "sx", "st", "dx", "n")}
    for s in sig:
        g = groups[s]
        ax = np.array([v.alpha_x for v in g]); at = np.array([v.alpha_t for v in g])
        cols["ax"].append(ax.mean()); cols["at"].append(at.mean())
        cols["axh"].append(np.percentile(ax, percentile)); cols["ath"].append(np.percentile(at, percentile))
        cols["sx"].append(ax.std()); cols["st"].append(at.std())
        cols["dx"].append(np.mean([v.dx_per_sigma for v in g])); cols["n"].append(len(g))
    meta = dict(metadata)
    meta.setdefault("source", "calibration")
    meta["runs"] = len(runs)
    meta["high_percentile"] = percentile
    return SensitivityProfile(sigmas=sig, alpha_x=cols["ax"], alpha_t=cols["at"], alpha_x_hi=cols["axh"],
                              alpha_t_hi=cols["ath"], alpha_x_std=cols["sx"], alpha_t_std=cols["st"],
                              dx_per_sigma=cols["dx"], counts=cols["n"], metadata=meta)
