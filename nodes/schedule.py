"""SenCache Schedule: a σ schedule for N real steps planned from the sensitivity profile (SIGMAS for SamplerCustom).

The planning itself is host-free (sencache_core.schedule); this node computes the base schedule the way ComfyUI's
BasicScheduler does, takes its first and last non-zero σ as anchors and returns the planned SIGMAS.
"""
from __future__ import annotations

import logging

import comfy.samplers
import torch
from comfy_api.latest import io

from ..sencache_core import ProfileError
from ..sencache_core import schedule as plan
from ..sencache_core import tuning as tuning_records
from .model_info import model_facts
from .profiles import check_profile
from .base_schedule import base_sigmas, discards_penultimate, shifted_schedules

log = logging.getLogger("SenCache")

Profile = io.Custom("SENCACHE_PROFILE")


SPACING_OPTIONS = (plan.AUTO, plan.CALIBRATED, *plan.SPACINGS)


def planned_sigmas(model, profile, steps: int, scheduler: str, base_steps: int, denoise: float = 1.0,
                   spacing: str = plan.AUTO):
    """(SIGMAS tensor of steps + 1 values, summary text)."""
    if profile is None:
        raise ProfileError("SenCache Schedule needs a sensitivity profile: connect Load Profile or a Sensitivity Calibrator")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1 (got {steps})")
    if not (0.0 < denoise <= 1.0):
        raise ValueError(f"denoise must be in (0, 1] (got {denoise})")
    for w in check_profile(profile, model_facts(model)):
        log.warning("SenCache Schedule: %s", w)
    if not plan.has_dx(profile):
        log.warning("SenCache Schedule: the profile has no latent-change rate (dx_per_sigma; imported files lack it); "
                    "planning with the documented proxy r = %g. A profile from the Sensitivity Calibrator plans better.",
                    plan.DX_PROXY)
    base = base_sigmas(model, scheduler, base_steps or steps, denoise)
    if spacing not in SPACING_OPTIONS:
        raise ValueError(f"spacing must be one of {SPACING_OPTIONS} (got {spacing!r})")
    used = spacing
    if spacing in (plan.AUTO, plan.CALIBRATED):
        tuning = profile.metadata.get("schedule_tuning")
        name = plan.calibrated_candidate(profile, steps, base_steps or steps)
        if name is None and spacing == plan.CALIBRATED:
            raise ProfileError("SenCache Schedule: spacing 'calibrated' needs a profile made with the Calibrator's "
                               "tune_schedule on, and steps at most "
                               f"{plan.CALIBRATED_MAX_FRACTION:.0%} of base_steps" if not tuning else
                               f"SenCache Schedule: the profile's tuned spacings are for at most "
                               f"{plan.CALIBRATED_MAX_FRACTION:.0%} of the base steps; {steps} of {base_steps or steps} "
                               "is more: use 'scheduler × profile'")
        if name is not None and tuning.get("scheduler") != scheduler:
            log.warning("SenCache Schedule: the profile's spacings were tuned on scheduler %r, this schedule uses %r",
                        tuning.get("scheduler"), scheduler)
        used = f"calibrated: {name}" if name is not None else plan.SCHEDULER_X_PROFILE
        if name is not None:
            shifted = shifted_schedules(model, scheduler, denoise)
            if plan.shift_of(name) is not None and shifted is None:
                raise ProfileError(f"SenCache Schedule: the profile's tuned schedule is {name!r}, but this model has no "
                                   "shift (its sampling is not a flow model's); use spacing 'scheduler × profile'")
            sig = plan.schedule_for(profile, name, steps, base.tolist(), shifted,
                                    discards_penultimate(tuning.get("sampler")))
        else:
            sig = plan.plan_from_base(profile, steps, base.tolist(), plan.SCHEDULER_X_PROFILE)
    else:
        sig = plan.plan_from_base(profile, steps, base.tolist(), spacing)
    first, last = plan.anchors(base.tolist())
    tuning = profile.metadata.get("schedule_tuning")
    note = f"\ncalibration: {tuning_records.tuning_summary(tuning)}" if tuning else ""
    text = (f"SenCache Schedule ({used}): {steps} steps from σ {first:.4g} to {last:.4g} (then 0), the range of {scheduler} at "
            f"{base_steps or steps} steps; σ = " + ", ".join(f"{v:.4g}" for v in sig) + note)
    return torch.tensor(sig, dtype=torch.float32), text


class SenCacheSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SenCacheSchedule", display_name="SenCache Schedule", category="SenCache",
            description="Plans where N sampling steps go from the model's sensitivity profile, between the first and the "
                        "last non-zero σ of the base scheduler's schedule: the scheduler's spacing re-weighted by the "
                        "predicted change of the model output. Connect SIGMAS to SamplerCustom (works with SenCache too).",
            inputs=[
                io.Model.Input("model", tooltip="The model you sample with (its model_sampling gives the σ range; shift "
                                                "nodes before this one count)."),
                Profile.Input("profile", tooltip="Sensitivity profile of this model: from Load Profile or the Sensitivity Calibrator."),
                io.Int.Input("steps", default=10, min=1, max=10000,
                             tooltip="Real sampling steps of the planned schedule (count)."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="simple",
                               tooltip="The scheduler you would otherwise use: its first σ and last non-zero σ are kept."),
                io.Int.Input("base_steps", default=0, min=0, max=10000,
                             tooltip="Step count of the schedule you would otherwise use (count); its last non-zero σ becomes "
                                     "the planned schedule's last one. 0 = the same as steps."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="Denoise strength (fraction), as in BasicScheduler."),
                io.Combo.Input("spacing", options=list(SPACING_OPTIONS), default=plan.AUTO, optional=True,
                               tooltip="auto (default): 'calibrated' when the profile was made with the Calibrator's "
                                       "tune_schedule on (and steps ≤ 75 % of base_steps), else 'scheduler × profile'. "
                                       "calibrated: the schedule that came closest to the full-step runs on average over that "
                                       "calibration's runs (for flow models the scheduler at another shift, or the "
                                       "profile's plan), at the nearest tuned fraction (1/2, 1/3, 1/4 of the steps). scheduler × profile: the "
                                       "scheduler's own spacing, with steps moved to where the profile predicts faster change. "
                                       "profile only: the same predicted output change per step whatever the scheduler "
                                       "(9-14 dB below 'scheduler × profile' on the demo model: a flat profile spreads the "
                                       "steps evenly in σ)."),
            ],
            outputs=[io.Sigmas.Output(tooltip="steps + 1 σ values, descending, ending with 0.")],
        )

    @classmethod
    def execute(cls, model, profile, steps, scheduler, base_steps, denoise,
                spacing=plan.AUTO) -> io.NodeOutput:
        sigmas, text = planned_sigmas(model, profile, steps, scheduler, base_steps, denoise, spacing)
        log.info(text)
        return io.NodeOutput(sigmas, ui={"text": [text]})


NODES = [SenCacheSchedule]
