"""Why a run reused nothing, in the user's terms (shown in the log line, the node strip, the toast and the
Visualizer summary)."""
from __future__ import annotations

from collections import Counter

_REASON_TEXT = {
    "score_above_eps": "the predicted change S stayed above ε",
    "sigma_outside_profile": "the run's σ lie outside the profile's measured range (calibrate with this schedule)",
    "max_consecutive": "max_consecutive_reuse (K) is 0",
    "protected": "reuse_start_percent / reuse_end_percent exclude these steps",
    "cache_invalid": "the cached output did not fit (shape, device or non-finite values)",
}


def no_reuse_reason(trace) -> str | None:
    """Why a finished run reused nothing, in the user's terms; None when it reused something. The runtime's own
    reason (trace.config["no_reuse_reason"], from planning) wins; otherwise it is read off the decisions."""
    given = (trace.config or {}).get("no_reuse_reason")
    if given:
        return str(given)
    if trace.reused or not trace.steps or trace.interrupted:
        return None
    reasons = Counter(s.reason for s in trace.steps)
    main = [r for r, _ in reasons.most_common() if r not in ("first", "final_step")]
    if not main:
        return (f"only {len(trace.steps)} evaluations: the first and the final step are always computed, so nothing "
                "is left to reuse")
    text = _REASON_TEXT.get(main[0], main[0])
    if main[0] == "score_above_eps":
        pairs = [(s.score, s.eps) for s in trace.steps if s.reason == "score_above_eps" and s.score is not None]
        lo = min(pairs)
        text += (f" (smallest S {lo[0]:.3g} against ε {lo[1]:.3g}); raise eps_main, or set target_speedup so ε "
                 "is derived from the profile")
    return text + " [" + ", ".join(f"{k} {v}" for k, v in reasons.most_common()) + "]"
