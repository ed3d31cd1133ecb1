"""Plots and summaries of a SenCache run and of a sensitivity profile: the presentation of the pack (host-free:
numpy + matplotlib only; it lives with the nodes, outside the method in sencache_core).

Everything here reads a finished `RunTrace` (and a `SensitivityProfile`); nothing touches the model.
Matplotlib is imported lazily and only through its object API with the Agg canvas (no pyplot, no global
backend switch): ComfyUI runs nodes in a worker thread and pyplot's global state is not thread-safe.

The speed-up shown is the run's estimate, defined once in nodes/speedup.py.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from ..sencache_core.trace import RunTrace
from . import speedup

COMPUTED_COLOR = "#3465a4"   # blue: the model ran
REUSED_COLOR = "#4e9a06"     # green: the cached output was reused (the web strip uses the same colours)
EPS_COLOR = "#cc0000"
AX_COLOR = "#3465a4"
AT_COLOR = "#f57900"


# ---- numbers -------------------------------------------------------------------------------------------
def speedup_estimate(trace: RunTrace) -> float | None:
    """The run's estimated speed-up (nodes/speedup.py); None if it cannot be estimated."""
    return speedup.of_trace(trace).value


_REASON_TEXT = {
    "score_above_eps": "the predicted change S stayed above ε",
    "sigma_outside_profile": "the run's σ lie outside the profile's measured range (calibrate with this schedule)",
    "max_consecutive": "max_consecutive_reuse (K) is 0",
    "protected": "reuse_start_percent / reuse_end_percent exclude these steps",
    "cache_invalid": "the cached output did not fit (shape, device or non-finite values)",
    "other_step_cache": "another step cache is on this model (SenCache left every step to the model)",
}


def no_reuse_reason(trace: RunTrace) -> str | None:
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


def warning(trace: RunTrace) -> str | None:
    """What the user must know about the run besides its numbers: SenCache stood aside for another step cache, or
    never saw the run's model calls (nodes/step_caches.py); None otherwise."""
    c = trace.config or {}
    return c.get("other_cache") or c.get("bypassed")


def _finite(v):
    """JSON-safe number: None for None/NaN/inf (browsers' JSON.parse rejects NaN and Infinity)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def compact(trace: RunTrace, node_id=None) -> dict:
    """The run in a few numbers and a per-step list, JSON-safe: what the UI event and the web strip use.

    steps: one entry per model evaluation: sigma, reuse, S (predicted RMS change, None where no score was
    computed, e.g. the first step), eps (threshold), reason (policy reason string)."""
    sp = speedup_estimate(trace)
    return {
        "node_id": None if node_id is None else str(node_id),
        "computed": trace.computed, "reused": trace.reused, "total": len(trace.steps),
        "speedup": _finite(sp), "speedup_kind": speedup.of_trace(trace).kind,
        "speedup_text": speedup.of_trace(trace).text(),
        "wall_seconds": _finite(trace.wall_seconds), "model_seconds": _finite(trace.model_seconds),
        "interrupted": bool(trace.interrupted), "no_reuse_reason": no_reuse_reason(trace),
        "status": (trace.config or {}).get("profile_status"),
        "problem": (trace.config or {}).get("profile_problem"),
        "warning": warning(trace),
        "settings": {k: _finite(trace.config.get(k)) if k != "max_consecutive" else trace.config.get(k)
                     for k in ("eps_start", "eps_main", "max_consecutive")},
        "steps": [{"sigma": _finite(s.sigma), "reuse": bool(s.reuse), "S": _finite(s.score), "eps": _finite(s.eps),
                   "reason": s.reason} for s in trace.steps],
    }


def summary_line(trace: RunTrace) -> str:
    """One log line for a finished run."""
    n = len(trace.steps)
    parts = [f"computed {trace.computed}/{n} model evaluations, reused {trace.reused}"]
    pc = trace.per_cond()
    if len({v for v in pc.values()}) > 1:
        parts.append("per cond " + ", ".join(f"{k}: {c} computed/{r} reused" for k, (c, r) in sorted(pc.items())))
    c = trace.config
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    parts.append(f"eps_start={fmt(c.get('eps_start'))}, eps_main={fmt(c.get('eps_main'))}, K={c.get('max_consecutive')}"
                 + (f" (from target speed-up {c['budget']['target_speedup']}x)" if c.get("budget") else ""))
    wall = trace.wall_seconds if trace.wall_seconds is not None else 0.0
    parts.append(f"run {wall:.2f} s, model calls {trace.model_seconds:.2f} s")
    parts.append(speedup.of_trace(trace).text())
    why = no_reuse_reason(trace)
    if why:
        parts.append(f"nothing reused: {why}")
    warn = warning(trace)
    if warn and warn != why:
        parts.append(f"warning: {warn}")
    if trace.interrupted:
        parts.append("INTERRUPTED")
    return "SenCache: " + "; ".join(parts)


def summary(trace: RunTrace, profile=None, node_id=None) -> str:
    """A short plain-text summary of the run, with the numbers the plot shows."""
    n, c, r = len(trace.steps), trace.computed, trace.reused
    who = f" (SenCache node {node_id})" if node_id not in (None, "") else ""
    lines = [f"SenCache run{who}: computed {c}/{n} model evaluations, reused {r}"
             + (f" ({100.0 * r / n:.1f} %)" if n else "") + (" — INTERRUPTED" if trace.interrupted else "") + "."]
    sp = speedup_estimate(trace)
    if sp is not None:
        per = trace.model_seconds / c
        lines.append(f"{speedup.of_trace(trace).text().capitalize()} ({speedup.ESTIMATE_NOTE}: run "
                     f"{trace.wall_seconds:.3f} s wall, model calls {trace.model_seconds:.3f} s for {c} computed "
                     f"evaluations = {per:.4f} s each; computing all {n} would have taken ≈ "
                     f"{trace.wall_seconds + r * per:.3f} s).")
    else:
        lines.append("Speed-up: not available (no finished run with computed evaluations).")
    cfg = trace.config or {}
    if cfg.get("profile_status"):
        lines.append(f"Profile: {cfg['profile_status']}.")
    if cfg:
        lines.append(f"Settings: ε_start={cfg.get('eps_start')}, ε_main={cfg.get('eps_main')}, "
                     f"K={cfg.get('max_consecutive')} (max reuses in a row).")
    reasons = Counter(s.reason for s in trace.steps)
    if reasons:
        lines.append("Decisions: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()) + ".")
    pc = trace.per_cond()
    if len(pc) > 1:
        lines.append("Per cond: " + ", ".join(f"{k} {a} computed/{b} reused" for k, (a, b) in sorted(pc.items())) + ".")
    if profile is not None:
        lines.append(profile.describe())
    why = no_reuse_reason(trace)
    if why:
        lines.append(f"Nothing reused: {why}.")
    for w in trace.warnings:
        lines.append(f"Warning: {w}")
    return "\n".join(lines)


# ---- figures ---------------------------------------------------------------------------------------------
def _figure(width_px: int, height_px: int, dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _to_array(fig) -> np.ndarray:
    """RGB float32 array [H, W, 3] in 0..1."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return rgba[..., :3].astype(np.float32) / 255.0


def _style(ax):
    ax.grid(True, color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _alpha_curve(ax, s, mean, std, hi, color, name, side, meaning, marker, band) -> list:
    """One sensitivity against σ on `ax`: the mean, its ± std band, the high percentile when it differs."""
    line, = ax.plot(s, mean, color=color, lw=2, marker=marker, ms=3.5, label=f"{name}(σ)  ({side} axis)")
    handles = [line]
    if band and np.any(std > 0):
        ax.fill_between(s, np.maximum(mean - std, 0), mean + std, color=color, alpha=0.12, lw=0)
    if not np.allclose(hi, mean):
        h, = ax.plot(s, hi, color=color, lw=1, ls="--", label=f"{name} high percentile")
        handles.append(h)
    ax.set_ylabel(f"{name}  ({meaning})", color=color)
    ax.tick_params(axis="y", colors=color)
    ax.set_ylim(bottom=0)
    return handles


def _profile_axes(ax, profile, sigmas_computed=(), sigmas_reused=(), band: bool = True):
    """α_x (left axis) and α_t (right axis) against σ, high noise on the left as sampling proceeds."""
    s = profile.sigmas
    _style(ax)
    marker = "o" if s.size <= 60 else None
    handles = _alpha_curve(ax, s, profile.alpha_x, profile.alpha_x_std, profile.alpha_x_hi, AX_COLOR, "α_x",
                           "left", "output change per latent change", marker, band)
    ax2 = ax.twinx()
    ax2.spines["top"].set_visible(False)
    handles += _alpha_curve(ax2, s, profile.alpha_t, profile.alpha_t_std, profile.alpha_t_hi, AT_COLOR, "α_t",
                            "right", "output change per unit σ", marker, band)
    lo = min([s.min(), *sigmas_computed, *sigmas_reused])
    hi = max([s.max(), *sigmas_computed, *sigmas_reused])
    pad = 0.03 * max(hi - lo, 1e-6)
    ax.set_xlim(hi + pad, lo - pad)      # σ decreases left to right, like the sampling run
    ax.set_xlabel("noise level σ  (sampling runs left → right)")
    if len(sigmas_computed) or len(sigmas_reused):
        tr = ax.get_xaxis_transform()
        ax.vlines(list(sigmas_computed), 0, 0.05, transform=tr, color=COMPUTED_COLOR, lw=2)
        ax.vlines(list(sigmas_reused), 0, 0.05, transform=tr, color=REUSED_COLOR, lw=2)
    return handles


def render_run(trace: RunTrace, profile, title: str | None = None, width_px: int = 1280, height_px: int = 1024) -> np.ndarray:
    """The Visualizer's figure, as an RGB float array [H, W, 3] in 0..1.

    Top left: the profile α_x(σ), α_t(σ) (ticks: σ of this run's computed / reused evaluations).
    Top right: cumulative model evaluations, with SenCache against without caching.
    Bottom: per evaluation the predicted change S against the threshold ε, computed and reused marked."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    steps = trace.steps
    n = len(steps)
    idx = np.arange(1, n + 1)
    reuse = np.array([s.reuse for s in steps], dtype=bool)
    sig = np.array([s.sigma for s in steps], dtype=float)
    score = np.array([np.nan if s.score is None or not math.isfinite(s.score) else s.score for s in steps], dtype=float)
    eps = np.array([s.eps for s in steps], dtype=float)

    fig = _figure(width_px, height_px)
    gs = fig.add_gridspec(2, 2, height_ratios=[1, 1.1], hspace=0.62, wspace=0.38,
                          left=0.075, right=0.93, top=0.87, bottom=0.135)

    sp = speedup_estimate(trace)
    head = title or "SenCache run"
    line1 = f"{head}: computed {trace.computed}/{n} model evaluations ({trace.reused} reused)"
    line2 = (f"{speedup.of_trace(trace).text()}   ((wall + reused × model-call time per computed evaluation) / wall; "
             f"wall {trace.wall_seconds:.2f} s)" if sp is not None else speedup.of_trace(trace).text())
    if trace.interrupted:
        line2 += "  —  run was INTERRUPTED"
    fig.text(0.5, 0.975, line1, ha="center", va="top", fontsize=17, weight="bold")
    fig.text(0.5, 0.94, line2, ha="center", va="top", fontsize=12.5, color="#333333")

    # profile
    ax = fig.add_subplot(gs[0, 0])
    if profile is not None:
        handles = _profile_axes(ax, profile, sig[~reuse], sig[reuse])
        handles += [Line2D([], [], color=COMPUTED_COLOR, lw=2, label="σ of computed steps"),
                    Line2D([], [], color=REUSED_COLOR, lw=2, label="σ of reused steps")]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=9, ncol=3, frameon=False)
        ax.set_title("Sensitivity profile of the model", fontsize=12.5, loc="left")
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no profile", ha="center", va="center", transform=ax.transAxes)

    # cumulative evaluations
    ax = fig.add_subplot(gs[0, 1])
    _style(ax)
    cum = np.cumsum(~reuse)
    xs = np.r_[0, idx]
    mk = "o" if n <= 24 else None
    ax.plot(xs, xs, color="#888888", lw=2, ls="--", marker=mk, ms=3, label=f"without caching: {n}")
    ax.plot(xs, np.r_[0, cum], color=COMPUTED_COLOR, lw=2.5, marker=mk, ms=5, label=f"with SenCache: {trace.computed}")
    if n:
        ax.fill_between(xs, np.r_[0, cum], xs, color=REUSED_COLOR, alpha=0.18, lw=0, label=f"saved: {trace.reused}")
    ax.set_xlim(0, max(n, 1))
    ax.set_ylim(0, max(n, 1) * 1.05)
    ax.set_xlabel("model evaluation (step) #")
    ax.set_ylabel("model evaluations run so far")
    ax.set_title("Cumulative model evaluations", fontsize=12.5, loc="left")
    ax.legend(loc="upper left", fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.yaxis.get_major_locator().set_params(integer=True)

    # S vs ε
    ax = fig.add_subplot(gs[1, :])
    _style(ax)
    positive = np.concatenate([score[np.isfinite(score) & (score > 0)], eps[eps > 0]])
    log = positive.size > 0 and positive.max() / positive.min() > 30
    floor = positive.min() / 3 if positive.size else 1e-3
    if log:
        ax.set_yscale("log")
    ax.step(idx, eps, where="mid", color=EPS_COLOR, lw=2, label="threshold ε (reuse only if S < ε)")
    has = np.isfinite(score)
    s_plot = np.where(has, np.maximum(score, floor) if log else score, np.nan)
    size = 70 if n <= 60 else 25
    ax.scatter(idx[has & ~reuse], s_plot[has & ~reuse], s=size, color=COMPUTED_COLOR, zorder=3, edgecolor="white")
    ax.scatter(idx[has & reuse], s_plot[has & reuse], s=size, color=REUSED_COLOR, zorder=3, marker="D", edgecolor="white")
    top = np.nanmax(np.concatenate([s_plot[has], eps])) if n else 1.0
    if not log:
        ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    else:
        ax.set_ylim(floor / 1.5, top * 2.0)
    no_score = ~has
    if no_score.any():   # computed without a score (first step, final step, protected range, ...)
        ax.scatter(idx[no_score], np.full(no_score.sum(), ax.get_ylim()[0]), s=90, marker="^", color=COMPUTED_COLOR,
                   zorder=4, clip_on=False)
    # reuse/compute strip along the top of the panel
    tr = ax.get_xaxis_transform()
    for i, r in zip(idx, reuse):
        ax.add_patch(Rectangle((i - 0.45, 1.01), 0.9, 0.05, transform=tr, clip_on=False,
                               color=REUSED_COLOR if r else COMPUTED_COLOR))
    ax.set_xlim(0.4, n + 0.6)
    if n <= 40:
        ax.set_xticks(idx)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("model evaluation (step) #")
    ax.set_ylabel("predicted output change S  (RMS" + (", log scale)" if log else ")"))
    ax.set_title("Per step: predicted change S against the threshold ε", fontsize=12.5, loc="left", pad=22)
    handles = [Line2D([], [], color=EPS_COLOR, lw=2, label="threshold ε (reuse only if S < ε)"),
               Line2D([], [], ls="", marker="o", ms=8, color=COMPUTED_COLOR, label="S, step computed"),
               Line2D([], [], ls="", marker="D", ms=7, color=REUSED_COLOR, label="S, step reused (cache)"),
               Line2D([], [], ls="", marker="^", ms=8, color=COMPUTED_COLOR, label="computed, no S (first/final/protected)"),
               Patch(color=COMPUTED_COLOR, label="strip: computed"), Patch(color=REUSED_COLOR, label="strip: reused")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=9.5, ncol=3, frameon=False)
    return _to_array(fig)


def render_profile(profile, title: str | None = None, width_px: int = 960, height_px: int = 540) -> np.ndarray:
    """The profile alone (the Calibrator's preview), as an RGB float array [H, W, 3] in 0..1."""
    fig = _figure(width_px, height_px)
    ax = fig.add_axes([0.09, 0.22, 0.80, 0.62])
    handles = _profile_axes(ax, profile)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=9.5, ncol=4, frameon=False)
    m = profile.metadata
    head = title or "Sensitivity profile (SenCache)"
    fig.text(0.5, 0.965, head, ha="center", va="top", fontsize=15, weight="bold")
    lo, hi = profile.sigma_range
    sub = (f"{profile.sigmas.size} σ points in [{lo:.3g}, {hi:.3g}], runs: {m.get('runs', '?')}"
           + (f", model: {m['model_class']}" if m.get("model_class") else "")
           + (f", {m['sampler']}/{m['scheduler']}, {m['steps']} steps" if m.get("sampler") else "")
           + ("; band = ±1 std over runs" if np.any(profile.alpha_x_std > 0) else ""))
    fig.text(0.5, 0.905, sub, ha="center", va="top", fontsize=10.5, color="#333333")
    return _to_array(fig)
