"""Shared fixtures: one real ComfyUI host per test session (library mode, CPU), this pack loaded through
ComfyUI's own custom-node loader, and tiny checkpoints loaded through comfy.sd as real files are."""
from __future__ import annotations

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory):
    return tmp_path_factory.mktemp("comfy_base")


@pytest.fixture(scope="session")
def host(comfy_base):
    from devkit import host as h
    return h.boot(comfy_base)


@pytest.fixture(scope="session")
def pack(host):
    from devkit import host as h
    return h.pack_module()


@pytest.fixture(scope="session")
def tiny(host, comfy_base):
    """name -> loaded ModelPatcher (cached per session; tests clone before patching)."""
    import comfy.sd
    from devkit import tiny_models
    cache = {}

    def get(name: str):
        if name not in cache:
            path = tiny_models.write_checkpoint(name, pathlib.Path(comfy_base) / "models" / "diffusion_models")
            cache[name] = comfy.sd.load_diffusion_model(str(path))
        return cache[name]
    return get
