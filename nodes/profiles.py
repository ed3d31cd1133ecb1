"""Profile files: the `sencache` folder under ComfyUI's models, registered through folder_paths."""
from __future__ import annotations

import logging
import os

import folder_paths

from ..sencache_core import ProfileError, SensitivityProfile

log = logging.getLogger("SenCache")
FOLDER = "sencache"
EXTENSIONS = {".safetensors", ".npz"}
NPZ_PRESETS = ["auto", "wan21", "cogvideox15", "ltx091"]


def register_folder() -> None:
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER] = ([os.path.join(folder_paths.models_dir, FOLDER)], EXTENSIONS)
    else:
        folder_paths.folder_names_and_paths[FOLDER][1].update(EXTENSIONS)


def profile_dir() -> str:
    d = folder_paths.get_folder_paths(FOLDER)[0]
    os.makedirs(d, exist_ok=True)
    return d


def resolve(name: str) -> str:
    """Full path of a profile file inside the registered folders; refuses anything that escapes them."""
    if not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise ProfileError(f"invalid profile name {name!r}: choose a file from models/{FOLDER}")
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise ProfileError(f"profile {name!r} not found in models/{FOLDER} ({', '.join(folder_paths.get_folder_paths(FOLDER))})")
    real = os.path.realpath(path)
    if not any(os.path.commonpath([real, os.path.realpath(d)]) == os.path.realpath(d) for d in folder_paths.get_folder_paths(FOLDER)):
        raise ProfileError(f"profile {name!r} resolves outside models/{FOLDER}; refusing it")
    return path


def load(name: str, npz_preset: str = "auto") -> SensitivityProfile:
    path = resolve(name)
    if path.lower().endswith(".npz"):
        profile = SensitivityProfile.from_reference_npz(path, None if npz_preset == "auto" else npz_preset)
    else:
        profile = SensitivityProfile.load(path)
    profile.metadata.setdefault("name", name)
    return profile


def save(profile: SensitivityProfile, filename_prefix: str) -> str:
    """Save as models/sencache/<prefix>_00001.safetensors (next free counter); returns the file name."""
    base = profile_dir()
    prefix = filename_prefix.strip().replace("\\", "/")
    if not prefix or os.path.isabs(prefix) or ".." in prefix.split("/"):
        raise ProfileError(f"invalid filename prefix {filename_prefix!r}")
    sub, stem = os.path.split(prefix)
    folder = os.path.join(base, sub)
    os.makedirs(folder, exist_ok=True)
    n = 1
    while os.path.exists(os.path.join(folder, f"{stem}_{n:05d}.safetensors")):
        n += 1
    rel = os.path.join(sub, f"{stem}_{n:05d}.safetensors") if sub else f"{stem}_{n:05d}.safetensors"
    tmp = os.path.join(base, rel + ".tmp")
    profile.save(tmp)
    os.replace(tmp, os.path.join(base, rel))      # never leaves a half-written profile behind
    log.info("SenCache: saved profile %s", os.path.join(base, rel))
    return rel
