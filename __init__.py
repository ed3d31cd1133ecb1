"""SenCache for ComfyUI: sensitivity-aware caching for video diffusion models.

ComfyUI loads this file; the nodes are defined in nodes/ (V3 schema, via comfy_entrypoint) and the method in
sencache_core/ (host-free). WEB_DIRECTORY holds the frontend extension. Importing this package does not
import ComfyUI: the nodes are imported when ComfyUI calls comfy_entrypoint().
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entrypoint
    return await entrypoint()


__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
