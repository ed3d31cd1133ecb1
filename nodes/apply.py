"""The SenCache node: MODEL + profile → MODEL with sensitivity-aware caching."""
from __future__ import annotations

import logging
import math
from dataclasses import replace

from ..sencache_core.planning import PLACEMENTS
from .learn import ProfileLearner
from .model_info import model_facts, unknown_class_message
from .profiles import check_profile
from .runtime import REUSE_MODES, SenCacheHolder, SenCacheSettings, attach

log = logging.getLogger("SenCache")


def checked_settings(settings: SenCacheSettings) -> SenCacheSettings:
    """The node's numbers, refused early when not finite or out of range; eps_main 0 means no reuse at all."""
    for name in ("eps_start", "eps_main", "eps_switch_percent", "reuse_start_percent", "reuse_end_percent",
                 "target_speedup"):
        v = getattr(settings, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"SenCache: {name} must be a finite number ≥ 0 (got {v})")
    if settings.placement not in PLACEMENTS:
        raise ValueError(f"SenCache: placement must be one of {PLACEMENTS} (got {settings.placement!r})")
    if settings.eps_switch_percent > 1:
        raise ValueError(f"SenCache: eps_switch_percent must lie in [0, 1] (got {settings.eps_switch_percent})")
    if settings.eps_main == 0 and settings.eps_start > 0 and settings.target_speedup == 0:
        settings = replace(settings, eps_start=0.0)      # eps_main 0 = never reuse, also in the early phase
    return settings


def apply_sencache(model, profile, settings: SenCacheSettings, node_id: str | None = None, publishers=(),
                   run_class=None, notes: list | None = None, learning_runs: int = 1,
                   learn_estimator: str = "trajectory"):
    """The model with SenCache attached, and its holder. publishers / run_class: SenCacheHolder's extension points.
    Warnings are logged and, when `notes` is a list, appended to it (the node shows them).
    profile None = learn mode: the profile is learned from this model's own runs and stored in models/sencache/learned
    (nodes/learn.py); the first `learning_runs` runs of a model, latent shape and sampler family compute every step
    and measure the profile (`learn_estimator`: nodes.learn.ESTIMATORS)."""
    settings = checked_settings(settings)
    if settings.max_consecutive < 0:
        raise ValueError(f"max_consecutive_reuse must be ≥ 0 (got {settings.max_consecutive})")
    if not (0.0 <= settings.reuse_start_percent <= settings.reuse_end_percent <= 1.0):
        raise ValueError("need 0 ≤ reuse_start_percent ≤ reuse_end_percent ≤ 1")
    if settings.reuse_mode not in REUSE_MODES:
        raise ValueError(f"reuse_mode must be one of {REUSE_MODES}")
    facts = model_facts(model)
    run_setup = None
    if profile is None:
        if run_class is not None:
            raise ValueError("learn mode (no profile) makes its own runs; run_class needs a profile")
        learner = ProfileLearner(facts, learning_runs, learn_estimator)
        publishers, run_class, run_setup = (learner.publish, *publishers), learner.make_run, learner.begin_run
        warnings = []
    else:
        warnings = check_profile(profile, facts)
    unknown = unknown_class_message(facts)
    if unknown:
        warnings.insert(0, unknown)
    for w in warnings:
        log.warning("SenCache: %s", w)
    if notes is not None:
        notes.extend(warnings)
    holder = SenCacheHolder(profile, settings, facts["latent_channels"], node_id=node_id, publishers=publishers,
                            run_class=run_class, run_setup=run_setup)
    return attach(model, holder), holder
