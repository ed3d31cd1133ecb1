"""SenCache Visualizer: plots the last sampling run of a SenCache-patched MODEL (profile, S vs ε, reuse
decisions, cumulative evaluations) as an IMAGE, plus a text summary. The plotting itself is host-free
(nodes/plotting.py); this module only finds the holder on the MODEL and converts the picture. The run's tensors
(one or several parts, e.g. LTX-2's video and audio) never reach it: it reads the trace.
"""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from . import plotting
from .runtime import SenCacheHolder, find_holder as _find_holder

log = logging.getLogger("SenCache")

Profile = io.Custom("SENCACHE_PROFILE")


class VisualizerError(ValueError):
    """The MODEL cannot be visualised (no SenCache, or not sampled yet)."""


def find_holder(model) -> SenCacheHolder:
    holder = _find_holder(model)
    if holder is None:
        raise VisualizerError("SenCache Visualizer: this MODEL has no SenCache attached. Connect the MODEL output of "
                              "the SenCache node (the same one that feeds your KSampler).")
    return holder


def visualize(model, profile=None):
    """(image tensor [1, H, W, 3] float 0..1, summary text, compact trace dict) of the MODEL's last run."""
    holder = find_holder(model)
    trace = holder.last_trace
    if trace is None or not trace.steps:
        raise VisualizerError("SenCache Visualizer: this SenCache MODEL has not been sampled yet. Connect the sampler's "
                              "LATENT output to the Visualizer's 'latent' input so it runs after sampling.")
    profile = profile if profile is not None else holder.profile
    node = holder.node_id
    title = "SenCache run" + (f" (node {node})" if node not in (None, "") else "")
    image = torch.from_numpy(plotting.render_run(trace, profile, title=title)).unsqueeze(0)
    return image, plotting.summary(trace, profile, node_id=node), plotting.compact(trace, node)


def profile_preview(profile) -> list[dict]:
    """Save the profile plot as a temp PNG; the UI-output entries that show it on a node (the Calibrator's).
    Never raises: a failed preview must not lose a finished calibration."""
    try:
        import os
        import uuid

        import folder_paths
        import numpy as np
        from PIL import Image
        arr = plotting.render_profile(profile)
        name = f"sencache_profile_{uuid.uuid4().hex[:12]}.png"
        temp = folder_paths.get_temp_directory()
        os.makedirs(temp, exist_ok=True)
        Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)).save(os.path.join(temp, name), compress_level=1)
        return [{"filename": name, "subfolder": "", "type": "temp"}]
    except Exception as e:  # noqa: BLE001
        log.warning("SenCache: could not draw the profile preview: %s", e)
        return []


class SenCacheVisualizer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SenCacheVisualizer", display_name="SenCache Visualizer", category="SenCache",
            description="Plots the last sampling run of a SenCache model: the sensitivity profile α_x(σ), α_t(σ), per step "
                        "the predicted change S against the threshold ε with computed and reused steps marked, and the "
                        "cumulative model evaluations against an uncached run; the title gives computed/total and the "
                        "estimated speed-up (from the evaluation counts and the measured time per model call).",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL output of the SenCache node (the one your sampler used)."),
                io.Latent.Input("latent", tooltip="The sampler's output LATENT. Only orders execution: the plot is made "
                                                  "after sampling. Its values are not used."),
                Profile.Input("profile", optional=True,
                              tooltip="Sensitivity profile to draw (optional; default: the profile the SenCache node uses)."),
            ],
            outputs=[io.Image.Output(display_name="plot", tooltip="The plot as an image (1 frame)."),
                     io.String.Output(display_name="summary", tooltip="Short text summary with the same numbers.")],
        )

    @classmethod
    def execute(cls, model, latent, profile=None) -> io.NodeOutput:
        image, text, trace = visualize(model, profile)
        return io.NodeOutput(image, text, ui={"text": [text], "sencache_trace": [trace]})


NODES = [SenCacheVisualizer]
