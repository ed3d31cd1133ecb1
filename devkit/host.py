"""Boot the real ComfyUI host in library mode (CPU, offline).

ComfyUI location: $SENCACHE_COMFYUI if set, else .dev/ComfyUI made by scripts/setup.sh. scripts/test.sh runs the
suite once per host (0.3.75, and 0.18.1 where its source tree is available), setting SENCACHE_COMFYUI and, for
0.18.1, PYTHONPATH=.dev/site-0.18.1 (the packages that host needs beyond the venv).
"""
from __future__ import annotations

import asyncio
import importlib
import os
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
_BOOTED = None
# ComfyUI's own top-level nodes.py (its root goes first on sys.path), not this pack's nodes/ package
COMFY_NODES_MODULE = "nodes"


def comfyui_dir() -> pathlib.Path:
    d = pathlib.Path(os.environ.get("SENCACHE_COMFYUI") or REPO / ".dev" / "ComfyUI")
    if not (d / "comfy" / "model_management.py").exists():
        raise RuntimeError(f"No ComfyUI at {d}: run scripts/setup.sh (or set SENCACHE_COMFYUI)")
    return d


def comfyui_version(d: str | os.PathLike | None = None) -> tuple[int, ...]:
    """The host's version from its comfyui_version.py, e.g. (0, 18, 1); read from the file, without importing comfy."""
    text = (pathlib.Path(d) if d else comfyui_dir()).joinpath("comfyui_version.py").read_text()
    m = re.search(r"__version__\s*=\s*[\"']([0-9][0-9.]*)", text)
    if not m:
        raise RuntimeError(f"cannot read the ComfyUI version from {text!r}")
    return tuple(int(p) for p in m.group(1).strip(".").split("."))


def version_text(v: tuple[int, ...] | None = None) -> str:
    return ".".join(map(str, v or comfyui_version()))


def boot(base_dir: str | os.PathLike | None = None, load_pack: bool = True, cpu: bool = True):
    """Import ComfyUI as a library (with --cpu unless cpu=False, e.g. for GPU benchmarks), point its folders at
    base_dir and load this pack through ComfyUI's own custom-node loader. Returns the `nodes` module.
    Idempotent within a process."""
    global _BOOTED
    if _BOOTED is not None:
        return _BOOTED
    root = str(comfyui_dir())
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    comfy.cli_args.args.cpu = bool(cpu)     # before anything imports comfy.model_management (pitfall 1)
    comfy.cli_args.args.disable_api_nodes = True
    import utils.extra_config  # noqa: F401  (before `nodes`, pitfall 2)
    import folder_paths
    if base_dir is not None:
        base = pathlib.Path(base_dir)
        for sub in ("models/diffusion_models", "models/sencache", "output", "input", "temp", "user"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        folder_paths.models_dir = str(base / "models")
        for name, (paths, exts) in list(folder_paths.folder_names_and_paths.items()):
            folder_paths.folder_names_and_paths[name] = ([str(base / "models" / pathlib.Path(p).name) for p in paths], exts)
        folder_paths.set_output_directory(str(base / "output"))
        folder_paths.set_input_directory(str(base / "input"))
        folder_paths.set_temp_directory(str(base / "temp"))
        folder_paths.set_user_directory(str(base / "user"))
    comfy_nodes = importlib.import_module(COMFY_NODES_MODULE)
    if load_pack:
        if not asyncio.run(comfy_nodes.load_custom_node(str(REPO), module_parent="custom_nodes")):
            raise RuntimeError(f"ComfyUI could not load the pack at {REPO}; see the log above")
    _BOOTED = comfy_nodes
    return comfy_nodes


def pack_module():
    """The pack as ComfyUI loaded it (module name = the repo folder's name)."""
    return sys.modules[str(REPO).replace(".", "_x_")]  # the name nodes.load_custom_node gives it
