"""The pack's one definition of a speed-up figure, used by every place that shows one (log line, node strip, toast,
Visualizer, demo report).

- **measured**: the time of an uncached run divided by the time of the SenCache run of the same work. Only a
  caller that actually timed both may make one: `measured` for one pair of times, `measured_repeats` for repeated
  runs on a machine shared with other work (the medians, never above the evaluation ratio, with a word when the
  noise is larger than the difference).
- **estimated**: a single SenCache run has no uncached twin, so the cost of computing every evaluation is estimated
  from the evaluation counts and the measured model-call time per computed evaluation:

      speed-up ≈ (wall + reused · model_seconds / computed) / wall

  It is always labelled an estimate (`estimated`).

Plain Python (no ComfyUI import), so the benchmarks and the demo report use it too.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

MEASURED = "measured"
ESTIMATED = "estimated"


@dataclass(frozen=True)
class SpeedUp:
    value: float | None     # None: no figure (no finished run with a computed evaluation)
    kind: str               # MEASURED or ESTIMATED
    basis: str = "wall-clock"   # measured: what was timed
    note: str = ""              # measured: what the reader must know about the figure (capped, within noise)

    def text(self) -> str:
        """The label every surface shows, e.g. 'estimated speed-up ≈1.62×'."""
        if self.value is None:
            return "speed-up: not available"
        if self.kind == MEASURED:
            return f"measured speed-up {self.value:.2f}× ({self.basis} vs an uncached run)" + (
                f"; {self.note}" if self.note else "")
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


def measured_repeats(uncached: Sequence[float], cached: Sequence[float], evaluation_ratio: float | None,
                     basis: str = "CPU time") -> SpeedUp:
    """A measured speed-up from repeated runs of the same work, uncached and with SenCache. Alternate the two (a
    machine shared with other jobs slows runs in bursts) and time what other jobs disturb least, e.g. the process's
    CPU time.

    - The figure: median uncached time / median SenCache time.
    - Never above `evaluation_ratio` (model evaluations of the uncached run / evaluations SenCache computed): both
      runs do the same work apart from the skipped evaluations, so no more than that can be saved. A larger ratio of
      times is noise; the figure is then the evaluation ratio, and the note says so.
    - Noise: half the range of each side's times, the larger of the two. When it is at least the difference of the
      medians, the note says that these repeats cannot tell the two apart. One repeat gives no noise estimate.
    """
    u = [float(v) for v in uncached]
    c = [float(v) for v in cached]
    n = min(len(u), len(c))
    label = f"median {basis} of {n} alternating repeats" if n > 1 else f"{basis}, one run each"
    if n == 0 or not all(math.isfinite(v) and v > 0 for v in u + c):
        return SpeedUp(None, MEASURED, label)
    mu, mc = statistics.median(u), statistics.median(c)
    value, notes = mu / mc, []
    if evaluation_ratio is not None and math.isfinite(evaluation_ratio) and value > evaluation_ratio:
        notes.append(f"capped at the evaluation ratio {evaluation_ratio:.2f}×, the most that skipping evaluations can "
                     f"save (the times gave {value:.2f}×: noise)")
        value = evaluation_ratio
    if n < 2:
        notes.append("one repeat: the timing noise is unknown")
    else:
        noise = max((max(u) - min(u)) / 2, (max(c) - min(c)) / 2)
        if noise >= abs(mu - mc):
            notes.append(f"the timing noise (±{noise:.2f} s) is larger than the difference ({mu - mc:+.2f} s): these "
                         "repeats do not tell the two apart")
    return SpeedUp(value, MEASURED, label, "; ".join(notes))


ESTIMATE_NOTE = ("estimated from the evaluation counts and the measured time per model call: "
                 "(wall + reused × model-call time per computed evaluation) / wall")


def of_trace(trace) -> SpeedUp:
    """The estimate of a finished sencache_core RunTrace."""
    return estimated(trace.wall_seconds, trace.model_seconds, trace.computed, trace.reused)
