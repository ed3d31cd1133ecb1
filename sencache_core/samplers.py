"""Sampler families: which samplers integrate the same probability-flow ODE and which add noise as they go."""
from __future__ import annotations

# Samplers that add fresh noise during sampling: their latent steps carry noise, so ‖Δx‖ per unit σ (and what the
# fit learns from it) depends on the sampler; each gets its own profile. Every other sampler integrates the same
# probability-flow ODE, where ‖Δx‖ ≈ ‖dx/dσ‖·|Δσ| for all of them: they share one family, "ode".
STOCHASTIC_MARKERS = ("ancestral", "sde", "ddpm", "lcm", "restart", "seeds", "sa_solver", "langevin")


def sampler_family(sampler_name: str | None) -> str:
    """'ode' for deterministic samplers (one family: module docstring), the sampler's own name for samplers that add
    noise, 'unknown' when the host could not tell."""
    if not sampler_name:
        return "unknown"
    name = str(sampler_name).lower()
    name = name[len("sample_"):] if name.startswith("sample_") else name
    if any(m in name for m in STOCHASTIC_MARKERS):
        return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)[:40]
    return "ode"

