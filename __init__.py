"""SenCache for ComfyUI: sensitivity-aware caching for video diffusion models.

ComfyUI loads this file; the nodes are defined in nodes/ (V3 schema, via comfy_entrypoint) and the method in
sencache_core/ (host-free). WEB_DIRECTORY holds the frontend extension.
"""
from .nodes import comfy_entrypoint  # noqa: F401

WEB_DIRECTORY = "./web"
__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
