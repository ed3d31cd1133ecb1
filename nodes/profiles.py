"""Profile files: the `sencache` folder under ComfyUI's models, registered through folder_paths; the checks of the
names and numbers the nodes are given."""
from __future__ import annotations

import errno
import logging
import numbers
import os
import re
import uuid

import folder_paths

from ..sencache_core import ProfileError, SensitivityProfile, compare_fingerprints
from ..sencache_core.profile import npz_preset_for_name

log = logging.getLogger("SenCache")
FOLDER = "sencache"
EXTENSIONS = {".safetensors", ".npz"}
NPZ_PRESETS = ["auto", "wan21", "cogvideox15", "ltx091"]
# Characters a profile name may not contain: markup (ComfyUI's frontend renders combo entries as HTML in places)
# and control characters. Such files are left out of Load Profile's list and refused by Save Profile.
UNSAFE_NAME = re.compile(r"[<>&\"'`\x00-\x1f\x7f]")
COUNTER_SUFFIX = "_00001.safetensors"     # what Save Profile adds to a prefix (the counter grows as needed)


def register_folder() -> None:
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER] = ([os.path.join(folder_paths.models_dir, FOLDER)], EXTENSIONS)
    else:
        folder_paths.folder_names_and_paths[FOLDER][1].update(EXTENSIONS)


def profile_dir(create: bool = True) -> str:
    """models/sencache (made if missing, unless `create` is False: then it may not exist)."""
    d = folder_paths.get_folder_paths(FOLDER)[0]
    if create:
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


def safe_names(names: list[str]) -> list[str]:
    """The profile names Load Profile lists: those without markup or control characters (a warning per file left out)."""
    keep = []
    for n in names:
        if UNSAFE_NAME.search(n):
            log.warning("SenCache: profile file %r is left out of Load Profile's list: its name contains markup or "
                        "control characters; rename it", n)
        else:
            keep.append(n)
    return keep


def load(name: str, npz_preset: str = "auto") -> SensitivityProfile:
    path = resolve(name)
    if path.lower().endswith(".npz"):
        profile = SensitivityProfile.from_reference_npz(path, None if npz_preset == "auto" else npz_preset)
        for w in npz_warnings(name, npz_preset, profile):
            log.warning("SenCache: %s", w)
    else:
        profile = SensitivityProfile.load(path)
    profile.metadata.setdefault("name", name)
    return profile


def npz_warnings(name: str, npz_preset: str, profile: SensitivityProfile) -> list[str]:
    """What a user must know about a converted reference .npz: rows dropped, a preset its name contradicts."""
    out = []
    m = profile.metadata
    if m.get("dropped_rows"):
        out.append(f"{name}: {m['dropped_rows']} of {m.get('rows', '?')} rows were dropped (not finite after the "
                   f"conversion with preset '{m.get('preset')}')")
    guess = npz_preset_for_name(name)
    if npz_preset not in ("auto", None) and guess is not None and guess != npz_preset:
        lo, hi = profile.sigma_range
        out.append(f"{name} looks like a {guess} file but was converted with npz_preset '{npz_preset}': its σ range "
                   f"[{lo:.4g}, {hi:.4g}] and α_t units are then wrong for {guess}; choose '{guess}' or 'auto'")
    return out


def check_prefix(filename_prefix: str) -> tuple[str, str]:
    """(sub-folder, stem) of a save prefix, or ProfileError before any work is done: empty or blank (spaces only),
    absolute, '..', markup characters, a name longer than the file system allows (its NAME_MAX, counting the
    counter and extension added), or a sub-folder that resolves outside models/sencache (a symlink), which Load
    Profile would refuse. Spaces around the prefix are ignored."""
    if filename_prefix and not filename_prefix.strip():
        raise ProfileError(f"invalid filename prefix {filename_prefix!r}: it is blank (only spaces); give a name")
    prefix = (filename_prefix or "").strip().replace("\\", "/")
    if not prefix or os.path.isabs(prefix) or ".." in prefix.split("/"):
        raise ProfileError(f"invalid filename prefix {filename_prefix!r}: use a name (sub-folders allowed) inside "
                           f"models/{FOLDER}")
    if UNSAFE_NAME.search(prefix):
        raise ProfileError(f"invalid filename prefix {filename_prefix!r}: it may not contain < > & \" ' ` or control "
                           "characters")
    sub, stem = os.path.split(prefix)
    if not stem:
        raise ProfileError(f"invalid filename prefix {filename_prefix!r}: it ends with '/'; add a file name")
    base = os.path.realpath(folder_paths.get_folder_paths(FOLDER)[0])
    folder = os.path.realpath(os.path.join(base, sub))
    if os.path.commonpath([folder, base]) != base:
        raise ProfileError(f"filename prefix {filename_prefix!r} leads outside models/{FOLDER} (through a symbolic "
                           "link); Load Profile would refuse the file. Choose another sub-folder")
    name_max, path_max = _fs_limits(folder)
    for part in [p for p in sub.split("/") if p] + [stem + COUNTER_SUFFIX]:
        n = len(os.fsencode(part))
        if n > name_max:
            what = (f"the file name {part[:40]}… ({n} bytes with the counter and extension {COUNTER_SUFFIX})"
                    if part.endswith(COUNTER_SUFFIX) else f"the folder name {part[:40]}… ({n} bytes)")
            raise ProfileError(f"filename prefix too long: {what} is longer than the {name_max} bytes the file system "
                               f"of models/{FOLDER} allows per name; shorten it")
    full = len(os.fsencode(os.path.join(folder, stem + COUNTER_SUFFIX)))
    if full > path_max:
        raise ProfileError(f"filename prefix too long: the path would be {full} bytes, the file system allows "
                           f"{path_max}; shorten it")
    return sub, stem


def _fs_limits(folder: str) -> tuple[int, int]:
    """(longest file name, longest path) in bytes on the file system of `folder` (of its nearest existing parent);
    255 and 4096 where the system cannot say (Windows)."""
    d = folder
    while d and not os.path.isdir(d) and os.path.dirname(d) != d:
        d = os.path.dirname(d)
    out = []
    for key, default in (("PC_NAME_MAX", 255), ("PC_PATH_MAX", 4096)):
        try:
            v = os.pathconf(d, key)
        except (AttributeError, OSError, ValueError):
            v = None
        out.append(int(v) if v and v > 0 else default)
    return out[0], out[1]


def temp_path(folder: str) -> str:
    """A fresh temporary file name in `folder` for writing a profile before it is renamed into place: short (any
    name length fits), hidden, unique per process and call (two processes never write the same one)."""
    return os.path.join(folder, f".sencache-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def describe_os_error(e: OSError) -> str:
    """What failed and where, in one line: 'Read-only file system: /path' (a rename names its destination)."""
    what = e.strerror or str(e) or type(e).__name__
    where = getattr(e, "filename2", None) or e.filename
    return f"{what}: {where}" if where else what


def save(profile: SensitivityProfile, filename_prefix: str) -> str:
    """Save as models/sencache/<prefix>_00001.safetensors (next free counter; never replaces a file, also when another
    process saves under the same prefix at once); returns the file name. OSError (naming the path) on a failed write,
    with nothing left behind."""
    sub, stem = check_prefix(filename_prefix)
    base = profile_dir()
    folder = os.path.join(base, sub)
    os.makedirs(folder, exist_ok=True)
    sub, stem = check_prefix(filename_prefix)      # again: the folder exists now, so any link in it is resolved
    tmp = temp_path(folder)
    try:
        profile.save(tmp)                          # (removes what it wrote if it fails)
    except OSError as e:                           # said of the folder, not of the temporary file
        raise OSError(e.errno, e.strerror, folder) from e
    try:
        n = 1
        while True:
            rel = os.path.join(sub, f"{stem}_{n:05d}.safetensors") if sub else f"{stem}_{n:05d}.safetensors"
            path = os.path.join(base, rel)
            if not os.path.lexists(path):
                try:
                    os.link(tmp, path)             # fails if another process took the name meanwhile
                    break
                except FileExistsError:
                    pass
                except OSError as e:               # a file system without hard links: rename instead
                    if e.errno not in (errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    os.replace(tmp, path)
                    break
            n += 1
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    log.info("SenCache: saved profile %s", path)
    return rel


def is_whole(v) -> bool:
    """Whether a node's INT input is a whole number (ComfyUI's API turns 2.7 into 2 with int(): see nodes/__init__)."""
    return not isinstance(v, bool) and (isinstance(v, numbers.Integral) or (isinstance(v, float) and v.is_integer()))


def check_profile(profile, facts: dict) -> list[str]:
    """Raise on a profile that cannot apply to this model; return warnings for ones that may."""
    warnings = []
    ch = profile.metadata.get("latent_channels")
    if ch is not None and int(ch) != facts["latent_channels"]:
        raise ProfileError(f"profile '{profile.metadata.get('name', '?')}' was measured on a model with {ch} latent "
                           f"channels; this model ({facts['model_class']}) has {facts['latent_channels']}. "
                           "Use a profile of this model, or calibrate one with the Sensitivity Calibrator node.")
    verdict = compare_fingerprints(profile.metadata.get("fingerprint"), facts["fingerprint"])
    if verdict == "arch_differs":
        raise ProfileError(f"profile '{profile.metadata.get('name', '?')}' was measured on a different model "
                           f"architecture than this {facts['model_class']} (fingerprint "
                           f"{profile.metadata['fingerprint'].get('arch')} vs {facts['fingerprint']['arch']}). "
                           "Calibrate this model with the Sensitivity Calibrator node.")
    if verdict == "weights_differ":
        warnings.append("profile was measured on other weights of the same architecture (another checkpoint, dtype "
                        "or fine-tune); it applies, but calibrating this model gives the best results")
    if verdict == "unknown":
        warnings.append("profile has no model fingerprint (imported); make sure it belongs to this model")
    return warnings
