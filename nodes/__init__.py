"""ComfyUI nodes of the SenCache pack (V3 schema). Thin: inputs → sencache_core objects → wrappers."""
from __future__ import annotations

import functools
import logging

import comfy.samplers
from comfy_api.latest import ComfyExtension, io

from . import demo, profiles, schedule, visualize
from .apply import apply_sencache
from .calibrate import calibrate
from .runtime import NODE_DEFAULTS, REUSE_MODES, SenCacheSettings
from .ui_events import NODE_PUBLISHERS, notify, prompt_server
from ..sencache_core import tuning as tuning_records

log = logging.getLogger("SenCache")
Profile = io.Custom("SENCACHE_PROFILE")
# Budget mode by default: ε is in the model's own output units, so one ε gives different speed-ups on different
# models and settings (ε 0.1: 1.01x to 1.52x on two demo checkpoints and five settings); a target of 2x gave 1.88x to
# 1.98x in every one of them (results/defaults/).
DEFAULT_TARGET_SPEEDUP = 2.0
PCT = "fraction of the sampling schedule as ComfyUI counts it (0 = start, highest σ; 1 = end, σ = 0); works in σ, so it holds for any step count, denoise and split sampling"


class SenCache(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SenCacheApply", display_name="SenCache", category="SenCache",
            description="Skips model evaluations whose output a calibrated sensitivity bound predicts to change by less "
                        "than ε, reusing the cached output instead (SenCache, CVPR 2026). Without a profile connected it "
                        "learns one from your first run(s) of each model, latent size and sampler family.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (Wan 2.1/2.2, LTX-Video, CogVideoX, ...)."),
                Profile.Input("profile", optional=True,
                              tooltip="Sensitivity profile of this model: from Load Profile or the Sensitivity Calibrator. "
                                      "Leave it unconnected to learn the profile from your own runs: the first run of a "
                                      "model, latent size and sampler family computes every step (the uncached result) plus one "
                                      "extra evaluation per step to measure the sensitivities, and stores the profile in "
                                      "models/sencache/learned; later runs find it and reuse evaluations."),
                io.Float.Input("eps_main", default=NODE_DEFAULTS["eps_main"], min=0.0, max=10.0, step=0.005,
                               tooltip="Reuse threshold ε after the early phase: the predicted RMS change per element of the "
                                       "model output (the model's own output units, e.g. velocity for Wan/LTXV). Higher = faster, "
                                       "lower fidelity; 0 = never reuse (eps_start is then 0 too). Applies only when target_speedup is 0: the same ε gives "
                                       "different speed-ups on different models and settings."),
                io.Float.Input("eps_start", default=NODE_DEFAULTS["eps_start"], min=0.0, max=10.0, step=0.005,
                               tooltip="Stricter ε (same units as eps_main) for the fragile early part of the schedule, until eps_switch_percent. "
                                       "Applies to runs with CFG (an uncond pass) only: without CFG eps_main applies throughout."),
                io.Float.Input("eps_switch_percent", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Where eps_start gives way to eps_main, as a " + PCT + "."),
                io.Int.Input("max_consecutive_reuse", default=NODE_DEFAULTS["max_consecutive"], min=0, max=100,
                             tooltip="K: at most this many evaluations in a row reuse the cache (count of model evaluations). "
                                     "Caps the speed-up at K+1. In budget mode (target_speedup > 0) K is derived from the target instead."),
                io.Float.Input("reuse_start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="No reuse before this point, a " + PCT + ". The first evaluation of a run is always computed."),
                io.Float.Input("reuse_end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="No reuse after this point, a " + PCT + "."),
                io.Boolean.Input("protect_final_step", default=True,
                                 tooltip="Always compute the last step of the schedule (the one that lands on σ = 0)."),
                io.Boolean.Input("use_high_percentile", default=False,
                                 tooltip="Use the profile's high percentile of the sensitivities instead of their mean (more conservative)."),
                io.Combo.Input("reuse_mode", options=list(REUSE_MODES), default="output_extrapolated",
                               tooltip="What is reused: output_extrapolated (default) = the output extrapolated in σ from the last two computed steps "
                                       "in runs without CFG (cfg 1), the cached output itself with CFG; output = always the cached output; "
                                       "output_minus_input = its difference from the model input, re-added to the current input."),
                io.Float.Input("target_speedup", default=DEFAULT_TARGET_SPEEDUP, min=0.0, max=20.0, step=0.05, optional=True,
                               tooltip="Budget mode (the default): ε and K are derived per run from the profile so the run computes "
                                       "about steps / target_speedup model evaluations, on any model (eps_start keeps its ratio to "
                                       "eps_main; the ε values and max_consecutive_reuse above are then ignored). K = the smallest "
                                       "value that can reach that count; without CFG, with output_extrapolated, at least 6 from about "
                                       "3x on. 0 = ε mode: eps_main, eps_start and max_consecutive_reuse as given."),
                io.Int.Input("learning_runs", default=1, min=1, max=16, optional=True,
                             tooltip="Only without a profile connected: how many runs (count) of a model, latent size and "
                                     "sampler family learn the profile (each computes every step plus one extra evaluation "
                                     "per step) before runs reuse evaluations; more runs average over more prompts and seeds. "
                                     "A changed model (other weights, a LoRA) is noticed and learned again."),
            ],
            outputs=[io.Model.Output(tooltip="The model with SenCache attached (connect it to a KSampler).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, eps_main, eps_start, eps_switch_percent, max_consecutive_reuse, reuse_start_percent,
                reuse_end_percent, protect_final_step, use_high_percentile, reuse_mode,
                target_speedup=DEFAULT_TARGET_SPEEDUP, profile=None, learning_runs=1) -> io.NodeOutput:
        settings = SenCacheSettings(eps_start=eps_start, eps_main=eps_main, max_consecutive=max_consecutive_reuse,
                                    eps_switch_percent=eps_switch_percent, reuse_start_percent=reuse_start_percent,
                                    reuse_end_percent=reuse_end_percent, protect_final=protect_final_step,
                                    high_percentile=use_high_percentile, reuse_mode=reuse_mode,
                                    target_speedup=target_speedup)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        notes = []
        patched, _ = apply_sencache(model, profile, settings, node_id=node_id, publishers=NODE_PUBLISHERS, notes=notes,
                                    learning_runs=learning_runs)
        return io.NodeOutput(patched, ui={"text": notes} if notes else None)


class SensitivityCalibrator(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SenCacheCalibrator", display_name="Sensitivity Calibrator (SenCache)", category="SenCache",
            description="Samples like a KSampler and measures the model's sensitivities α_x(σ), α_t(σ) on the sampling "
                        "trajectory (one extra model evaluation of the positive branch per step). Use your own model/LoRA/resolution.",
            inputs=[
                io.Model.Input("model", tooltip="The model to calibrate (with your LoRAs applied, without SenCache)."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning (sensitivities are measured on this branch)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (used by CFG as in normal sampling)."),
                io.Latent.Input("latent_image", tooltip="The latent to sample (resolution and frame count you will render at)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the first run; run i uses seed + i."),
                io.Int.Input("steps", default=30, min=2, max=1000, tooltip="Sampling steps per run (count)."),
                io.Float.Input("cfg", default=6.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="uni_pc", tooltip="Sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple", tooltip="Scheduler."),
                io.Int.Input("runs", default=2, min=1, max=64, tooltip="Number of sampling runs (consecutive seeds) to average over (count); with tune_schedule also the samples its verdict is judged on (at least 3)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Denoise strength (fraction), as in KSampler."),
                io.String.Input("save_as", default="", tooltip="If set, also save the profile as models/sencache/<save_as>_00001.safetensors (checked before calibrating: a name of spaces only or longer than the file system allows is refused). If saving fails, the outputs are still given and the node says why."),
                io.Boolean.Input("tune_schedule", default=False, optional=True,
                                 tooltip="Also tell whether SenCache caching or fewer steps comes closer to the full run, "
                                         "at 1/2, 1/3 and 1/4 of the steps, and find the best schedule for fewer steps: "
                                         "every run is a sample; each is sampled with 7 candidate schedules (for flow "
                                         "models the scheduler at shifts 1-12 and the profile's plan) and with caching. "
                                         "The verdict is judged on runs the schedule was not chosen on and needs runs ≥ 3 "
                                         "(4 or more gives clearer answers); it says 'no clear winner' when the "
                                         "difference is within noise. Costs about 9–10 runs' worth of model evaluations "
                                         "per run. SenCache Schedule then uses the chosen schedule."),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The first run's sampled latent (identical to a plain KSampler run)."),
                     Profile.Output(display_name="profile", tooltip="The measured sensitivity profile.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, runs, denoise, save_as,
                tune_schedule=False) -> io.NodeOutput:
        if save_as:
            profiles.check_prefix(save_as)      # a bad, blank or too long name fails now, not after the calibration
        latent, profile = calibrate(model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, runs, denoise,
                                    bool(tune_schedule))
        text = profile.describe()
        if profile.metadata.get("schedule_tuning"):
            text += "\nfewer steps: " + tuning_records.tuning_summary(profile.metadata["schedule_tuning"])
        if save_as:
            try:
                text += f"\nsaved: models/sencache/{profiles.save(profile, save_as)}"
            except Exception as e:      # noqa: BLE001  the measured profile and latent still go out
                why = profiles.describe_os_error(e) if isinstance(e, OSError) else str(e)
                problem = (f"the profile could not be saved as {save_as!r} in models/sencache: {why}. The latent and "
                           "the profile outputs are valid: connect Save Profile to keep the profile")
                log.warning("SenCache: %s", problem)
                notify(problem)
                text += f"\nNOT saved: {problem}"
        return io.NodeOutput(latent, profile, ui={"text": [text], "images": visualize.profile_preview(profile)})


class SaveProfile(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SenCacheSaveProfile", display_name="Save Profile (SenCache)", category="SenCache",
            description="Saves a sensitivity profile to models/sencache.", is_output_node=True,
            inputs=[Profile.Input("profile", tooltip="The profile to save."),
                    io.String.Input("filename_prefix", default="sencache_profile",
                                    tooltip="File name prefix inside models/sencache (sub-folders allowed); a counter and .safetensors are added. Spaces around it are ignored; a prefix of spaces only is refused.")],
            outputs=[],
        )

    @classmethod
    def execute(cls, profile, filename_prefix) -> io.NodeOutput:
        name = profiles.save(profile, filename_prefix)
        return io.NodeOutput(ui={"text": [f"saved models/sencache/{name}"]})


class LoadProfile(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SenCacheLoadProfile", display_name="Load Profile (SenCache)", category="SenCache",
            description="Loads a sensitivity profile from models/sencache: our .safetensors files or the reference .npz files.",
            inputs=[io.Combo.Input("profile_name", options=_profile_names(),
                                   tooltip="A file in models/sencache (.safetensors from this pack, or a reference sensitivity_*.npz)."),
                    io.Combo.Input("npz_preset", options=profiles.NPZ_PRESETS, default="auto",
                                   tooltip="For reference .npz files only: which model's latent size D and timestep units to convert with (auto = from the file name).")],
            outputs=[Profile.Output(display_name="profile", tooltip="The loaded profile.")],
        )

    @classmethod
    def fingerprint_inputs(cls, profile_name, npz_preset):
        try:
            import os
            return (profile_name, npz_preset, os.path.getmtime(profiles.resolve(profile_name)))
        except Exception:
            return (profile_name, npz_preset)

    @classmethod
    def execute(cls, profile_name, npz_preset) -> io.NodeOutput:
        return io.NodeOutput(profiles.load(profile_name, npz_preset))


def _profile_names() -> list[str]:
    import folder_paths
    try:
        return profiles.safe_names(folder_paths.get_filename_list(profiles.FOLDER))
    except Exception:
        return []


NODE_CLASSES = [SenCache, SensitivityCalibrator, SaveProfile, LoadProfile, *visualize.NODES, *demo.NODES, *schedule.NODES]


class SenCacheExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)


def refuse_fractional_ints(json_data):
    """A PromptServer on_prompt handler. ComfyUI converts an INT input with int() before any node sees it, so an API
    prompt's learning_runs 2.7 would run as 2 without a word. A number that is not whole, given to an INT input of
    this pack's nodes, is replaced by a text saying so: ComfyUI's validation then refuses the prompt, naming the node
    and the input."""
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    for node in (prompt.values() if isinstance(prompt, dict) else ()):
        ints = _int_inputs().get(node.get("class_type")) if isinstance(node, dict) else None
        inputs = node.get("inputs") if ints else None
        for name in (ints & inputs.keys() if isinstance(inputs, dict) else ()):
            v = inputs[name]
            if isinstance(v, float) and not v.is_integer():
                inputs[name] = f"{v!r} (SenCache: {name} takes a whole number)"
    return json_data


@functools.cache
def _int_inputs() -> dict[str, set]:
    """node id -> names of its INT inputs, for every node of this pack."""
    out = {}
    for cls in NODE_CLASSES:
        schema = cls.define_schema()
        out[schema.node_id] = {i.id for i in schema.inputs if isinstance(i, io.Int.Input)}
    return out


async def comfy_entrypoint() -> SenCacheExtension:
    profiles.register_folder()
    server = prompt_server()
    if hasattr(server, "add_on_prompt_handler") and refuse_fractional_ints not in server.on_prompt_handlers:
        server.add_on_prompt_handler(refuse_fractional_ints)
    return SenCacheExtension()
