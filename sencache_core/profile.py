"""Sensitivity profile: α_x(σ), α_t(σ) on a σ grid, with spread, counts and metadata.

Units (see package docstring): σ is ComfyUI's sampler σ; α_x is dimensionless (RMS/RMS); α_t is RMS of
the model output per unit σ. `dx_per_sigma` is the typical ‖Δx‖_rms per unit σ along the trajectories it
was measured on (lets a budget be simulated). Lookup interpolates linearly in σ, so any step count,
scheduler, shift, denoise or split sampling can use one profile.

Above its top σ a profile is used flat (the values at its top) when that top is already high-noise
(σ ≥ HIGH_NOISE_SIGMA: noise at least 10x the signal in RMS). Zero-terminal-SNR schedules (CogVideoX: ComfyUI's σ
table ends at σ ≈ 4519) start far above where a measurement or reference table may end, and the first evaluation of
a run is computed anyway; this is logged once per profile at INFO. Below the lowest σ, and above a top that is not
high-noise, σ beyond RANGE_TOLERANCE is not covered: those evaluations are computed.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .tuning import merge_tuning

FORMAT_VERSION = 1
MAX_FILE_BYTES = 64 * 1024 * 1024   # a profile is a few KB; refuse anything absurd before reading it
MAX_GRID = 100_000
ARRAYS = ("sigmas", "alpha_x", "alpha_t", "alpha_x_hi", "alpha_t_hi", "alpha_x_std", "alpha_t_std",
          "dx_per_sigma", "counts")
UNITS = {"sigma": "ComfyUI sampler sigma (flow models: t in [0,1])", "norm": "RMS over noisy-latent elements",
         "alpha_x": "dimensionless (RMS/RMS)", "alpha_t": "RMS of model output per unit sigma",
         "dx_per_sigma": "RMS of latent change per unit sigma", "alpha_hi": "per-sigma high percentile"}
# Tolerance for lookups just outside the measured σ range, as a fraction of the range's width.
RANGE_TOLERANCE = 0.05
# A profile whose top σ is at least this covers every σ above it with its top values (module docstring).
HIGH_NOISE_SIGMA = 10.0
# The largest σ a profile may hold: far above any sampler's schedule (CogVideoX's zero-terminal-SNR table tops at
# σ ≈ 4519); a larger one is a unit mix-up or a corrupt file.
MAX_SIGMA = 1e5
log = logging.getLogger("SenCache")

# Latent sizes D = elements of one sample's latent in the reference code's defaults (docs/METHOD.md §2, §6).
D_PRESETS = {
    "wan21": 16 * 21 * 60 * 104,        # sqrt = 1447.98
    "cogvideox15": 14 * 16 * 60 * 90,   # sqrt = 1099.82
    "ltx091": 128 * 21 * 16 * 24,       # sqrt = 1015.97
}


class ProfileError(ValueError):
    """A profile that cannot be used (bad file, bad numbers, wrong model)."""


@dataclass
class SensitivityProfile:
    sigmas: np.ndarray
    alpha_x: np.ndarray
    alpha_t: np.ndarray
    alpha_x_hi: np.ndarray | None = None
    alpha_t_hi: np.ndarray | None = None
    alpha_x_std: np.ndarray | None = None
    alpha_t_std: np.ndarray | None = None
    dx_per_sigma: np.ndarray | None = None
    counts: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    _noted_above: bool = field(default=False, init=False, repr=False, compare=False)   # INFO note logged once

    def __post_init__(self):
        for name in ARRAYS:    # before anything is flattened: a 2-D array is refused as what it is
            v = getattr(self, name)
            if v is not None and np.ndim(v) > 1:
                raise ProfileError(f"profile array '{name}' has shape {tuple(np.shape(v))}; a profile's arrays are 1-D "
                                   "(one value per σ grid point)")
        n = len(np.atleast_1d(self.sigmas))
        defaults = {"alpha_x_hi": lambda: self.alpha_x, "alpha_t_hi": lambda: self.alpha_t,   # percentile = mean
                    "alpha_x_std": lambda: np.zeros(n), "alpha_t_std": lambda: np.zeros(n),
                    "dx_per_sigma": lambda: np.zeros(n), "counts": lambda: np.ones(n)}
        for name in ARRAYS:   # order matters: alpha_x/alpha_t are converted before their percentile defaults
            v = getattr(self, name)
            setattr(self, name, np.asarray(defaults[name]() if v is None else v, dtype=np.float64).reshape(-1))
        self.metadata = dict(self.metadata)
        self.metadata.setdefault("format_version", FORMAT_VERSION)
        self.metadata.setdefault("units", UNITS)
        self.validate()

    # -- checks -----------------------------------------------------------------------------------
    def validate(self) -> None:
        n = self.sigmas.size
        if n == 0:
            raise ProfileError("sensitivity profile is empty (no σ grid points)")
        if n > MAX_GRID:
            raise ProfileError(f"sensitivity profile has {n} grid points (more than {MAX_GRID}); refusing it")
        for name in ARRAYS:
            v = getattr(self, name)
            if v.shape != (n,):
                raise ProfileError(f"profile array '{name}' has {v.size} values, the σ grid has {n}")
            if not np.all(np.isfinite(v)):
                raise ProfileError(f"profile array '{name}' contains NaN or infinite values")
            if np.any(v < 0):
                raise ProfileError(f"profile array '{name}' contains negative values")
        if n > 1 and not np.all(np.diff(self.sigmas) > 0):
            raise ProfileError("profile σ grid must be strictly increasing")
        # meaning, not only shape
        hi = float(self.sigmas[-1])
        if hi <= 0:
            raise ProfileError("profile σ grid holds only σ = 0, where no sampler evaluates the model: it covers no step")
        if hi > MAX_SIGMA:
            raise ProfileError(f"profile σ grid reaches σ = {hi:.4g}, far beyond any sampler's noise levels (at most "
                               f"{MAX_SIGMA:g}): wrong units or a corrupt file")
        if not (np.any(self.alpha_x > 0) or np.any(self.alpha_t > 0)):
            raise ProfileError("profile α_x and α_t are 0 at every σ: it predicts no change anywhere, so every step "
                               "would be reused; it holds no measurement")

    @property
    def sigma_range(self) -> tuple[float, float]:
        return float(self.sigmas[0]), float(self.sigmas[-1])

    def extends_above(self) -> bool:
        """Whether σ above the measured range is covered flat by the top values (top σ already high-noise)."""
        return self.sigma_range[1] >= HIGH_NOISE_SIGMA

    def covers(self, sigma: float) -> bool:
        lo, hi = self.sigma_range
        tol = RANGE_TOLERANCE * max(hi - lo, 1e-6)
        return lo - tol <= sigma <= hi + tol or (sigma > hi and self.extends_above())

    def lookup(self, sigma: float, high_percentile: bool = False) -> tuple[float, float] | None:
        """(α_x, α_t) at σ, linearly interpolated (clamped at the ends); None if σ lies outside the
        measured range by more than RANGE_TOLERANCE of its width (above a high-noise top: covered flat)."""
        if not math.isfinite(sigma) or not self.covers(sigma):
            return None
        lo, hi = self.sigma_range
        if sigma > hi + RANGE_TOLERANCE * max(hi - lo, 1e-6) and not self._noted_above:
            self._noted_above = True
            log.info("SenCache: σ=%.4g lies above the profile's top σ=%.4g; the top is already high-noise, so the "
                     "profile's top values are used there (noted once per profile)", sigma, hi)
        ax = self.alpha_x_hi if high_percentile else self.alpha_x
        at = self.alpha_t_hi if high_percentile else self.alpha_t
        return float(np.interp(sigma, self.sigmas, ax)), float(np.interp(sigma, self.sigmas, at))

    def dx_rate(self, sigma: float) -> float:
        return float(np.interp(sigma, self.sigmas, self.dx_per_sigma))

    # -- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the safetensors file at `path`. A failed write (folder missing or read-only, name too long, disk
        full) raises OSError naming the path and removes what it wrote. The file is created as any file the process
        writes (mode 0666 less the umask)."""
        import torch
        from safetensors.torch import save
        tensors = {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name))) for name in ARRAYS}
        data = save(tensors, metadata={"sencache_profile": json.dumps(self.metadata, sort_keys=True),
                                       "format_version": str(FORMAT_VERSION)})
        path = os.fspath(path)
        f = open(path, "wb")
        try:
            with f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException as e:
            try:
                os.remove(path)
            except OSError:
                pass
            if isinstance(e, OSError) and e.filename is None:     # a failed write (disk full) names no file
                raise OSError(e.errno, e.strerror, path) from e
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SensitivityProfile":
        """Load our safetensors profile, or a reference `.npz` (see from_reference_npz; preset by name)."""
        path = os.fspath(path)
        _check_size(path)
        if path.lower().endswith(".npz"):
            return cls.from_reference_npz(path)
        from safetensors import safe_open
        try:
            with safe_open(path, framework="np") as f:
                meta = f.metadata() or {}
                if "sencache_profile" not in meta:
                    raise ProfileError(f"{os.path.basename(path)} is not a SenCache profile (no 'sencache_profile' metadata)")
                arrays = {}
                for name in ARRAYS:
                    if name not in f.keys():
                        raise ProfileError(f"{os.path.basename(path)}: missing array '{name}'")
                    arrays[name] = f.get_tensor(name)
        except ProfileError:
            raise
        except Exception as e:  # truncated or corrupt file: safetensors raises its own errors
            raise ProfileError(f"cannot read profile {os.path.basename(path)}: {e}") from e
        try:
            metadata = json.loads(meta["sencache_profile"])
        except json.JSONDecodeError as e:
            raise ProfileError(f"{os.path.basename(path)}: metadata is not valid JSON: {e}") from e
        if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
            raise ProfileError(f"{os.path.basename(path)} has format version {metadata.get('format_version')}; "
                               f"this SenCache reads up to {FORMAT_VERSION}: update the pack")
        for name, v in arrays.items():
            if not np.issubdtype(v.dtype, np.floating):
                raise ProfileError(f"{os.path.basename(path)}: array '{name}' has dtype {v.dtype}, expected float")
        return cls(metadata=metadata, **arrays)

    @classmethod
    def from_reference_npz(cls, path: str | os.PathLike, preset: str | None = None) -> "SensitivityProfile":
        """Import the reference code's `sensitivity_{wan21,cogvid,ltx}.npz` (docs/METHOD.md §6).

        `timesteps` are in 0..1000 units and J_t_norm is a Frobenius norm over the reference latent of D
        elements per timestep unit, measured as a finite difference from each t to the next lower t of the file's
        own grid. We convert to our units over that same interval: α_t[per σ] = J_t_norm / sqrt(D) · Δt/Δσ with
        Δσ = |σ(t) − σ(t_next)| (the secant; the lowest t uses the interval above it). σ = t/1000 for the flow
        models (Wan 2.1, LTX-Video), where the secant equals the slope; for CogVideoX σ(t) = sqrt((1-ᾱ_t)/ᾱ_t) of its
        scaled-linear DDPM schedule rescaled to zero terminal SNR, with the last ᾱ as ComfyUI sets it (σ(999) ≈
        4519). The reference predicts α_t·|Δt| for a skip; ours α_t·|Δσ|: equal for a skip of one grid interval,
        and below the reference's where σ(t) curves (CogVideoX near t = 1000) for longer skips.
        J_x_norm is a ratio of norms over the same elements, hence already RMS/RMS.
        """
        path = os.fspath(path)
        _check_size(path)
        if preset is None or preset == "auto":
            preset = npz_preset_for_name(path)
            if preset is None:
                raise ProfileError(f"cannot tell which model {os.path.basename(path)} belongs to: choose a preset "
                                   f"({', '.join(D_PRESETS)})")
        if preset not in D_PRESETS:
            raise ProfileError(f"unknown preset '{preset}'; known: {', '.join(D_PRESETS)}")
        try:
            with np.load(path, allow_pickle=False) as z:
                t = np.asarray(z["timesteps"], dtype=np.float64).reshape(-1)
                jx = np.asarray(z["J_x_norm"], dtype=np.float64).reshape(-1)
                jt = np.asarray(z["J_t_norm"], dtype=np.float64).reshape(-1)
                counts = np.asarray(z["sample_counts"], dtype=np.float64).reshape(-1) if "sample_counts" in z.files else np.ones_like(t)
        except KeyError as e:
            raise ProfileError(f"{os.path.basename(path)} lacks array {e} (needs timesteps, J_x_norm, J_t_norm)") from e
        except Exception as e:
            raise ProfileError(f"cannot read {os.path.basename(path)}: {e}") from e
        if not (t.size == jx.size == jt.size == counts.size) or t.size == 0:
            raise ProfileError(f"{os.path.basename(path)}: arrays are empty or of different lengths")
        sqrt_d = math.sqrt(D_PRESETS[preset])
        if preset == "cogvideox15":
            sigma = _cogvideox_sigma(t)
            dsigma_dt = _secant_dsigma_dt(t, sigma)
        else:   # σ = t/1000: the secant is the slope
            sigma, dsigma_dt = t / 1000.0, np.full_like(t, 1 / 1000.0)
        alpha_t = jt / sqrt_d / dsigma_dt
        keep = np.isfinite(sigma) & np.isfinite(alpha_t) & np.isfinite(jx) & np.isfinite(counts)
        if not keep.any():
            raise ProfileError(f"{os.path.basename(path)}: no row is finite after conversion with preset '{preset}'")
        order = np.argsort(sigma[keep], kind="stable")
        s, ax, at, c = sigma[keep][order], jx[keep][order], alpha_t[keep][order], counts[keep][order]
        s, idx = np.unique(s, return_index=True)
        meta = {"source": "reference_npz", "file": os.path.basename(path), "preset": preset, "D": D_PRESETS[preset],
                "fingerprint": None, "latent_channels": {"wan21": 16, "cogvideox15": 16, "ltx091": 128}[preset],
                "dropped_rows": int((~keep).sum()), "rows": int(t.size)}
        return cls(sigmas=s, alpha_x=ax[idx], alpha_t=at[idx], counts=c[idx], metadata=meta)

    def describe(self) -> str:
        lo, hi = self.sigma_range
        m = self.metadata
        return (f"SenCache profile: {self.sigmas.size} σ points in [{lo:.4g}, {hi:.4g}], "
                f"runs={m.get('runs', '?')}, source={m.get('source', '?')}, "
                f"α_x {self.alpha_x.min():.3g}..{self.alpha_x.max():.3g}, α_t {self.alpha_t.min():.3g}..{self.alpha_t.max():.3g}")


def npz_preset_for_name(path: str | os.PathLike) -> str | None:
    """The preset a reference file's name suggests (sensitivity_wan21.npz → wan21, ...), or None."""
    name = os.path.basename(os.fspath(path)).lower()
    return "wan21" if "wan" in name else "cogvideox15" if "cog" in name else "ltx091" if "ltx" in name else None


def _check_size(path: str) -> None:
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ProfileError(f"cannot open profile {path}: {e}") from e
    if size == 0:
        raise ProfileError(f"profile file {os.path.basename(path)} is empty")
    if size > MAX_FILE_BYTES:
        raise ProfileError(f"profile file {os.path.basename(path)} is {size/1e6:.0f} MB; a profile is a few KB — refusing it")


def _cogvideox_sigma(t: np.ndarray) -> np.ndarray:
    """σ(t) of CogVideoX's schedule as ComfyUI's sampler uses it: scaled-linear betas 0.00085..0.012 over 1000 steps,
    rescaled to zero terminal SNR with the last ᾱ set to 4.8973451890853435e-08 (ComfyUI's
    rescale_zero_terminal_snr_sigmas), so σ(999) ≈ 4519 is finite. t is the scheduler step (interpolated between
    integers; outside 0..999 it is not finite)."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    sqrt_abar = np.sqrt(np.cumprod(1.0 - betas))
    s0, sT = sqrt_abar[0], sqrt_abar[-1]
    abar = ((sqrt_abar - sT) * s0 / (s0 - sT)) ** 2
    abar[-1] = 4.8973451890853435e-08
    table = np.sqrt((1 - abar) / abar)
    t = np.asarray(t, dtype=np.float64)
    return np.where((t >= 0) & (t <= 999), np.interp(t, np.arange(1000.0), table), np.inf)


def _secant_dsigma_dt(t: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """|Δσ/Δt| from each t to the next lower t of the same grid (the lowest t: from the next higher one); NaN where
    that is undefined (a single point, repeated t or σ)."""
    order = np.argsort(t, kind="stable")
    ts, ss = t[order], sigma[order]
    out_sorted = np.full(t.shape, np.nan)
    if t.size >= 2:
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.abs(np.diff(ss) / np.diff(ts))           # slope of interval [ts[i], ts[i+1]]
        out_sorted[1:] = slope                                  # each t uses the interval below it
        out_sorted[0] = slope[0]                                # the lowest t: the interval above it
    out = np.empty_like(out_sorted)
    out[order] = out_sorted
    out[~np.isfinite(out) | (out <= 0)] = np.nan
    return out


def merge_profiles(profiles: list[SensitivityProfile]) -> SensitivityProfile:
    """Merge profiles of one model (e.g. several resolutions or prompt sets) into one.

    Grid: the union of all σ points. At each σ, profiles whose range covers it contribute their
    interpolated values, weighted by their interpolated sample counts; the high percentile takes the
    maximum (conservative); counts add. Profiles of different architectures are refused.
    """
    if not profiles:
        raise ProfileError("nothing to merge")
    archs = {(p.metadata.get("fingerprint") or {}).get("arch") for p in profiles} - {None}
    if len(archs) > 1:
        raise ProfileError(f"cannot merge profiles of different model architectures ({', '.join(sorted(archs))})")
    grid = np.unique(np.concatenate([p.sigmas for p in profiles]))
    acc = {k: np.zeros_like(grid) for k in ("w", "ax", "at", "sx", "st", "dx")}
    hi_x, hi_t = np.zeros_like(grid), np.zeros_like(grid)
    for p in profiles:
        inside = (grid >= p.sigmas[0]) & (grid <= p.sigmas[-1])
        w = np.where(inside, np.interp(grid, p.sigmas, p.counts), 0.0)
        for key, arr in (("ax", p.alpha_x), ("at", p.alpha_t), ("sx", p.alpha_x_std), ("st", p.alpha_t_std), ("dx", p.dx_per_sigma)):
            acc[key] += w * np.interp(grid, p.sigmas, arr)
        acc["w"] += w
        hi_x = np.maximum(hi_x, np.where(inside, np.interp(grid, p.sigmas, p.alpha_x_hi), 0.0))
        hi_t = np.maximum(hi_t, np.where(inside, np.interp(grid, p.sigmas, p.alpha_t_hi), 0.0))
    w = np.maximum(acc["w"], 1e-12)
    meta = dict(profiles[0].metadata)
    meta.update({"source": "merge", "merged_from": [p.metadata.get("name") or p.metadata.get("source") for p in profiles],
                 "runs": int(sum(int(p.metadata.get("runs", 1) or 1) for p in profiles))})
    tuning = merge_tuning([p.metadata.get("schedule_tuning") for p in profiles])
    if tuning is None:
        meta.pop("schedule_tuning", None)
    else:
        meta["schedule_tuning"] = tuning
    return SensitivityProfile(sigmas=grid, alpha_x=acc["ax"] / w, alpha_t=acc["at"] / w, alpha_x_hi=hi_x, alpha_t_hi=hi_t,
                              alpha_x_std=acc["sx"] / w, alpha_t_std=acc["st"] / w, dx_per_sigma=acc["dx"] / w,
                              counts=acc["w"], metadata=meta)
