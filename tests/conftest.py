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


def pytest_configure(config):
    # Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they lose a lot to
    # oversubscription (measured: ~5x slower per evaluation with 2 threads beside another busy process).
    import torch
    torch.set_num_threads(1)


def pytest_report_header(config):
    from devkit import host as h
    return f"ComfyUI host: {h.version_text()} at {h.comfyui_dir()}"


def needs_host(version: tuple[int, ...], why: str):
    """Mark a test that needs ComfyUI >= version (skipped with the reason on an older host)."""
    from devkit import host as h
    have = h.comfyui_version()
    return pytest.mark.skipif(have < version, reason=f"needs ComfyUI >= {h.version_text(version)} ({why}); "
                                                      f"this host is {h.version_text(have)}")


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


@pytest.fixture(scope="session")
def sc(pack):
    """The pack's modules as ComfyUI loaded them: sc.runtime, sc.apply, sc.calibrate, sc.profiles, sc.visualize, sc.learn,
    ..., sc.core, sc.plotting (nodes.plotting)."""
    import importlib
    import types
    ns = types.SimpleNamespace()
    for name in ("runtime", "apply", "calibrate", "profiles", "model_info", "visualize", "ui_events", "learn"):
        setattr(ns, name, importlib.import_module(f"{pack.__name__}.nodes.{name}"))
    ns.nodes = importlib.import_module(f"{pack.__name__}.nodes")
    ns.core = importlib.import_module(f"{pack.__name__}.sencache_core")
    ns.plotting = importlib.import_module(f"{pack.__name__}.nodes.plotting")
    return ns


@pytest.fixture(scope="session")
def wan(tiny):
    """The tiny random Wan 2.1 T2V most tests use."""
    return tiny("tiny_wan21_t2v")


@pytest.fixture(scope="session")
def conds():
    """(positive, negative) conditioning for the tiny Wan models."""
    from devkit import sampling
    return sampling.text_cond(1), sampling.text_cond(2)


@pytest.fixture(scope="session")
def wan_profile(tiny, sc):
    """A profile calibrated on the tiny Wan T2V with the settings most tests use."""
    from devkit import sampling
    m = tiny("tiny_wan21_t2v")
    _, prof = sc.calibrate.calibrate(m, sampling.text_cond(1), sampling.text_cond(2), {"samples": sampling.wan_latent()},
                                     0, 8, 5.0, "euler", "simple", 2)
    return prof
