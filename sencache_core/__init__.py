"""SenCache core: the method, host-free (torch, numpy, safetensors only; never `comfy`).

Units, stated once here and used everywhere in the pack:
- σ (sigma): ComfyUI's noise level of the sampler (for flow models such as Wan/LTXV, σ = t ∈ [0, 1];
  the model's own `timestep` argument may be σ·1000, which we never use).
- Norms are RMS over the elements of one sample's noisy-latent channels (see `norms.rms`), so
  α_x = ‖Δf‖_rms / ‖Δx‖_rms is dimensionless, α_t = ‖Δf‖_rms per unit σ, and ε is a predicted
  RMS change of the model output per element (docs/METHOD.md §2).
"""
from .norms import rms, rms_diff
from .profile import SensitivityProfile, ProfileError, merge_profiles, D_PRESETS
from .policy import ReusePolicy, PolicyState, Decision
from .calibration import TrajectoryCalibrator, aggregate_runs
from .fingerprint import model_fingerprint, compare_fingerprints
from .trace import RunTrace, StepRecord
from .planning import PlanSettings, RunPlan, plan_run

__all__ = [
    "rms", "rms_diff", "SensitivityProfile", "ProfileError", "merge_profiles", "D_PRESETS",
    "ReusePolicy", "PolicyState", "Decision", "TrajectoryCalibrator", "aggregate_runs",
    "model_fingerprint", "compare_fingerprints", "RunTrace", "StepRecord", "PlanSettings", "RunPlan", "plan_run",
]
