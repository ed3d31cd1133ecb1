"""Per-run record of every model evaluation (plain data; its presentation lives in nodes/plotting.py)."""
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

    def per_cond(self) -> dict[str, tuple[int, int]]:
        out: dict[str, list[int]] = {}
        for s in self.steps:
            for c in s.computed_conds:
                out.setdefault(c, [0, 0])[0] += 1
            for c in s.reused_conds:
                out.setdefault(c, [0, 0])[1] += 1
        return {k: (v[0], v[1]) for k, v in out.items()}

    def to_dict(self) -> dict:
        return {"config": self.config, "steps": [asdict(s) for s in self.steps], "computed": self.computed,
                "reused": self.reused, "total": len(self.steps), "wall_seconds": self.wall_seconds,
                "model_seconds": self.model_seconds, "interrupted": self.interrupted, "warnings": list(self.warnings),
                "per_cond": {k: list(v) for k, v in self.per_cond().items()}}
