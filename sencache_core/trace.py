"""Per-run record of every model evaluation and the summary numbers shown to the user."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class StepRecord:
    index: int
    sigma: float
    reuse: bool
    reason: str
    score: float | None
    eps: float
    dx: float | None
    dsigma: float | None
    computed_conds: list = field(default_factory=list)   # cond names ('cond'/'uncond'/uuid) computed this step
    reused_conds: list = field(default_factory=list)
    model_seconds: float = 0.0
    window: list | None = None      # [first, last] frame index of a context window, else None


@dataclass
class RunTrace:
    config: dict = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    wall_seconds: float | None = None
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)

    def finish(self, interrupted: bool = False) -> "RunTrace":
        self.wall_seconds = time.perf_counter() - self.started
        self.interrupted = interrupted
        return self

    @property
    def computed(self) -> int:
        return sum(not s.reuse for s in self.steps)

    @property
    def reused(self) -> int:
        return sum(s.reuse for s in self.steps)

    @property
    def model_seconds(self) -> float:
        return sum(s.model_seconds for s in self.steps)

    def speedup(self):
        """The run's speed-up figure: an estimate (sencache_core.speedup), None-valued while unfinished."""
        from .speedup import estimated
        return estimated(self.wall_seconds, self.model_seconds, self.computed, self.reused)

    def per_cond(self) -> dict[str, tuple[int, int]]:
        out: dict[str, list[int]] = {}
        for s in self.steps:
            for c in s.computed_conds:
                out.setdefault(c, [0, 0])[0] += 1
            for c in s.reused_conds:
                out.setdefault(c, [0, 0])[1] += 1
        return {k: (v[0], v[1]) for k, v in out.items()}

    def summary_line(self) -> str:
        n = len(self.steps)
        parts = [f"computed {self.computed}/{n} model evaluations, reused {self.reused}"]
        pc = self.per_cond()
        if len({v for v in pc.values()}) > 1:
            parts.append("per cond " + ", ".join(f"{k}: {c} computed/{r} reused" for k, (c, r) in sorted(pc.items())))
        c = self.config
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
        parts.append(f"eps_start={fmt(c.get('eps_start'))}, eps_main={fmt(c.get('eps_main'))}, K={c.get('max_consecutive')}"
                     + (f" (from target speed-up {c['budget']['target_speedup']}x)" if c.get("budget") else ""))
        wall = self.wall_seconds if self.wall_seconds is not None else time.perf_counter() - self.started
        parts.append(f"run {wall:.2f} s, model calls {self.model_seconds:.2f} s")
        parts.append(self.speedup().text())
        from .explain import no_reuse_reason
        why = no_reuse_reason(self)
        if why:
            parts.append("nothing reused: " + why)
        if self.interrupted:
            parts.append("INTERRUPTED")
        return "SenCache: " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {"config": self.config, "steps": [asdict(s) for s in self.steps], "computed": self.computed,
                "reused": self.reused, "total": len(self.steps), "wall_seconds": self.wall_seconds,
                "model_seconds": self.model_seconds, "interrupted": self.interrupted, "warnings": list(self.warnings),
                "per_cond": {k: list(v) for k, v in self.per_cond().items()}}
