"""The reuse decision: the one place in the pack that decides whether a model evaluation is reused.

Rule (docs/METHOD.md §1–2), per model evaluation at noise level σ with latent x:
    S = α_x(σ_r)·‖x − x_r‖_rms + α_t(σ_r)·|σ − σ_r|
    reuse  iff  S < ε(σ)  and fewer than K evaluations in a row have been reused
where (x_r, σ_r) is the reference (the last computed evaluation), Δx and Δσ are cumulative from it, and
α is looked up once at σ_r. ε(σ) = ε_start while σ > σ_switch (the fragile early part), ε_main after — in guided
runs (CFG, an unconditional pass) only: without guidance ε_main applies throughout (`for_guidance`).
With a placement planned before the run (budget mode with placement "optimal", placement.py), the comparison of S
with ε is replaced by the plan: the steps it reuses are reused, every other evaluation is computed; the rules below
(first, window, final step, profile coverage, cache, K) still apply.
Everything is expressed in σ, never in step indices, so split sampling and denoise < 1 behave.
Always computed: the first evaluation of a run (nothing cached), evaluations outside the reuse window
(σ > σ_reuse_start or σ ≤ σ_reuse_end), the final step of the schedule (next σ = 0) when protected,
an evaluation whose cache is unusable, and any σ_r the profile does not cover.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .profile import SensitivityProfile

# Decision reasons (strings, so traces are plain JSON).
FIRST = "first"
PROTECTED = "protected"
FINAL = "final_step"
OUT_OF_PROFILE = "sigma_outside_profile"
CACHE_INVALID = "cache_invalid"
MAX_REUSE = "max_consecutive"
ABOVE_EPS = "score_above_eps"
PLANNED = "planned_compute"
REUSE = "reuse"


@dataclass(frozen=True)
class PlacementPlan:
    """A run's computed steps chosen in advance (placement.optimal_computed): `steps` are the σ of the schedule's
    steps, `computed` those to compute. A σ that is not one of the steps (an evaluation between steps) is computed."""
    steps: tuple
    computed: frozenset

    def classify(self, sigma: float) -> tuple[bool, bool]:
        """(σ is a step of the plan, that step is computed)."""
        for s in self.steps:
            if abs(sigma - s) <= 1e-6 * max(1.0, abs(s)):
                return True, s in self.computed
        return False, True


@dataclass(frozen=True)
class Decision:
    reuse: bool
    reason: str
    score: float | None   # S in RMS units; None when not evaluated
    eps: float
    dx: float | None      # ‖x − x_r‖_rms
    dsigma: float | None  # |σ − σ_r|


@dataclass
class PolicyState:
    """Per-run mutable state. A new one for every sampling run."""
    sigma_ref: float | None = None
    alpha_ref: tuple[float, float] | None = None  # (α_x, α_t) at σ_ref; None if σ_ref outside the profile
    consecutive: int = 0
    computed: int = 0
    reused: int = 0


@dataclass(frozen=True)
class ReusePolicy:
    profile: SensitivityProfile
    eps_start: float
    eps_main: float
    max_consecutive: int                       # K
    sigma_eps_switch: float = float("inf")     # ε_start applies while σ > this
    sigma_reuse_start: float = float("inf")    # reuse only while σ ≤ this ...
    sigma_reuse_end: float = 0.0               # ... and σ > this
    protect_final: bool = True
    high_percentile: bool = False              # use the profile's high percentile of α instead of the mean
    planned: PlacementPlan | None = None       # set: reuse exactly the plan's reused steps (still within K and the
                                               # other rules above) instead of comparing S with ε

    def __post_init__(self):
        for name in ("eps_start", "eps_main"):
            v = getattr(self, name)
            if not (v >= 0 and v < float("inf")):
                raise ValueError(f"{name} must be a finite number ≥ 0 (got {v})")
        if not isinstance(self.max_consecutive, int) or self.max_consecutive < 0:
            raise ValueError(f"max consecutive reuses K must be an integer ≥ 0 (got {self.max_consecutive})")

    def for_guidance(self, guided: bool) -> "ReusePolicy":
        """The policy for a run with (guided) or without an unconditional pass. The stricter early phase protects
        what CFG decides in the first steps, where the guidance scale amplifies any error of the reused outputs;
        without guidance those first steps (tiny Δσ at a high shift) are the cheapest to reuse, and keeping them
        strict cost up to 6.3 dB at equal evaluations on the demo model (docs/RESULTS.md)."""
        return self if guided else replace(self, eps_start=self.eps_main)

    def eps_at(self, sigma: float) -> float:
        return self.eps_start if sigma > self.sigma_eps_switch else self.eps_main

    def needs_dx(self, state: PolicyState, sigma: float | None, final_step: bool, cache_ok: bool) -> bool:
        """Whether `decide` reads dx. With σ = None: whether it may, judged from what is known before σ (the
        run's state, the cache and K), so a host can skip measuring ‖x − x_r‖ on the other evaluations."""
        if state.sigma_ref is None or state.alpha_ref is None or not cache_ok:
            return False
        if state.consecutive >= self.max_consecutive or max(self.eps_start, self.eps_main) <= 0:
            return False
        if self.planned is not None:
            return False
        if sigma is None:
            return True
        return (self.sigma_reuse_end < sigma <= self.sigma_reuse_start and not (final_step and self.protect_final)
                and self.eps_at(sigma) > 0)

    def decide(self, state: PolicyState, sigma: float, dx: float | None, final_step: bool, cache_ok: bool) -> Decision:
        """Pure: the decision for an evaluation at σ with ‖x − x_r‖_rms = dx. Does not change `state`.
        dx is read only where the score decides (`needs_dx`); every other evaluation is decided without it."""
        eps = self.eps_at(sigma)
        if state.sigma_ref is None:
            return Decision(False, FIRST, None, eps, None, None)
        dsigma = abs(sigma - state.sigma_ref)
        if not (self.sigma_reuse_end < sigma <= self.sigma_reuse_start):
            return Decision(False, PROTECTED, None, eps, dx, dsigma)
        if final_step and self.protect_final:
            return Decision(False, FINAL, None, eps, dx, dsigma)
        if state.alpha_ref is None:
            return Decision(False, OUT_OF_PROFILE, None, eps, dx, dsigma)
        if not cache_ok:
            return Decision(False, CACHE_INVALID, None, eps, dx, dsigma)
        if state.consecutive >= self.max_consecutive:
            return Decision(False, MAX_REUSE, None, eps, dx, dsigma)
        if self.planned is not None:               # the placement was planned before the run: no score needed
            on_plan, compute = self.planned.classify(sigma)
            if compute or not on_plan:
                return Decision(False, PLANNED, None, eps, dx, dsigma)
            return Decision(True, REUSE, None, eps, dx, dsigma)
        if eps <= 0:                               # S ≥ 0 is never < 0: no score needed
            return Decision(False, ABOVE_EPS, None, eps, dx, dsigma)
        if dx is None:                             # the host could not measure Δx (no comparable reference)
            return Decision(False, CACHE_INVALID, None, eps, dx, dsigma)
        ax, at = state.alpha_ref
        score = ax * dx + at * dsigma
        if score < eps:
            return Decision(True, REUSE, score, eps, dx, dsigma)
        return Decision(False, ABOVE_EPS, score, eps, dx, dsigma)

    def commit(self, state: PolicyState, sigma: float, decision: Decision) -> None:
        """Advance the state after `decision` was carried out at σ (a computed evaluation becomes the reference)."""
        if decision.reuse:
            state.consecutive += 1
            state.reused += 1
        else:
            state.sigma_ref = sigma
            state.alpha_ref = self.profile.lookup(sigma, self.high_percentile)
            state.consecutive = 0
            state.computed += 1
