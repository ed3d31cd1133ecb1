"""The pack's one definition of a speed-up figure, used by every place that shows one (log line, node strip, toast,
Visualizer, demo report).

- **measured**: wall-clock of an uncached run divided by wall-clock of the SenCache run of the same work. Only a
  caller that actually timed both may make one (`measured`).
- **estimated**: a single SenCache run has no uncached twin, so the cost of computing every evaluation is estimated
  from the evaluation counts and the measured model-call time per computed evaluation:

      speed-up ≈ (wall + reused · model_seconds / computed) / wall

  It is always labelled an estimate (`estimated`).

Plain Python (no ComfyUI import), so the benchmarks and the demo report use it too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

MEASURED = "measured"
ESTIMATED = "estimated"


@dataclass(frozen=True)
class SpeedUp:
    value: float | None     # None: no figure (no finished run with a computed evaluation)
    kind: str               # MEASURED or ESTIMATED

    def text(self) -> str:
        """The label every surface shows, e.g. 'estimated speed-up ≈1.62×'."""
        if self.value is None:
            return "speed-up: not available"
        if self.kind == MEASURED:
            return f"measured speed-up {self.value:.2f}× (wall-clock vs an uncached run)"
        return f"estimated speed-up ≈{self.value:.2f}×"


def estimated(wall_seconds: float | None, model_seconds: float, computed: int, reused: int) -> SpeedUp:
    """The estimate of one run from its wall time, its model-call time and its evaluation counts."""
    if not wall_seconds or not math.isfinite(wall_seconds) or wall_seconds <= 0 or computed <= 0:
        return SpeedUp(None, ESTIMATED)
    value = (wall_seconds + reused * model_seconds / computed) / wall_seconds
    return SpeedUp(value if math.isfinite(value) else None, ESTIMATED)


def measured(uncached_seconds: float, cached_seconds: float) -> SpeedUp:
    """A measured speed-up: the same work timed uncached and with SenCache."""
    if not (cached_seconds > 0 and uncached_seconds > 0):
        return SpeedUp(None, MEASURED)
    return SpeedUp(uncached_seconds / cached_seconds, MEASURED)


ESTIMATE_NOTE = ("estimated from the evaluation counts and the measured time per model call: "
                 "(wall + reused × model-call time per computed evaluation) / wall")


def of_trace(trace) -> SpeedUp:
    """The estimate of a finished sencache_core RunTrace."""
    return estimated(trace.wall_seconds, trace.model_seconds, trace.computed, trace.reused)
