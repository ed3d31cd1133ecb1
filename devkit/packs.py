"""Other ComfyUI packs that users combine with SenCache, for the compatibility tests (tests/test_compat.py).

scripts/setup.sh extracts them (hash-verified git archives named <pack>-<commit>.tar.gz) into .dev/ecosystem/<pack>
and installs their PyPI packages into .dev/site-ecosystem; the test server links the packs into its custom_nodes and
puts that folder on its PYTHONPATH. Nothing of theirs is shipped or committed.

    available() -> (True, "") or (False, why)
    PACKS[name].commit                      the commit of the archive each was extracted from
    make_gguf(src, dst)                     a Wan .safetensors -> Q8_0 GGUF, the pack's own way (see make_gguf)

`python -m devkit.packs requantize SRC DST QTYPE` and `python -m devkit.packs tool SCRIPT ARGS...` (run with
.dev/site-ecosystem on PYTHONPATH) are make_gguf's steps.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
ECOSYSTEM = REPO / ".dev" / "ecosystem"
SITE = REPO / ".dev" / "site-ecosystem"
ARCHIVES = pathlib.Path(os.environ.get("SENCACHE_ECOSYSTEM_DIR") or REPO.parent / "shared" / "ecosystem")


@dataclasses.dataclass(frozen=True)
class Pack:
    name: str          # folder name in custom_nodes, e.g. "ComfyUI-GGUF"
    repository: str    # where it comes from

    @property
    def path(self) -> pathlib.Path:
        return ECOSYSTEM / self.name

    @property
    def commit(self) -> str | None:
        """The commit in the archive's name (from the stamp setup.sh writes); None when not extracted."""
        try:
            stem = (self.path / ".sencache-archive").read_text().split()[0]
        except OSError:
            return None
        return stem.rsplit("-", 1)[1]


PACKS = {p.name: p for p in (Pack("ComfyUI-GGUF", "city96/ComfyUI-GGUF"),
                             Pack("ComfyUI-KJNodes", "kijai/ComfyUI-KJNodes"))}


def available() -> tuple[bool, str]:
    """Whether the packs and their packages are set up; else why not (a skip reason)."""
    missing = [p.name for p in PACKS.values() if p.commit is None]
    if missing:
        where = ARCHIVES if ARCHIVES.is_dir() else f"{ARCHIVES} (not found)"
        return False, (f"other packs not set up: {', '.join(missing)} (their archives are read from {where}; "
                       "run scripts/setup.sh where they exist)")
    if not (SITE / ".sencache-stamp").exists():
        return False, f"the packs' packages are not installed in {SITE}: run scripts/setup.sh"
    return True, ""


def _run(cmd: list, cwd, what: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SITE), str(REPO)]))
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")


def make_gguf(src: str | os.PathLike, dst: str | os.PathLike, qtype: str = "Q8_0", python: str = sys.executable) -> None:
    """A Wan 2.1 .safetensors as a GGUF file the way ComfyUI-GGUF's tools/README.md describes: tools/convert.py
    (F16; it sets Wan's 5-D patch embedding aside in ./fix_5d_tensors_wan.safetensors), requantized to `qtype` with
    the gguf package (the README's llama.cpp step), then tools/fix_5d_tensors.py puts the 5-D tensor back."""
    tools = PACKS["ComfyUI-GGUF"].path / "tools"
    src, dst = pathlib.Path(src).resolve(), pathlib.Path(dst).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        raw, quant = pathlib.Path(tmp, "raw-F16.gguf"), pathlib.Path(tmp, f"raw-{qtype}.gguf")
        _run([python, str(tools / "convert.py"), "--src", str(src), "--dst", str(raw)], tmp, "convert.py")
        _run([python, "-m", "devkit.packs", "requantize", str(raw), str(quant), qtype], REPO, "requantizing")
        _run([python, "-m", "devkit.packs", "tool", str(tools / "fix_5d_tensors.py"), "--src", str(quant),
              "--dst", str(dst), "--fix", str(pathlib.Path(tmp, "fix_5d_tensors_wan.safetensors")), "--overwrite"],
             REPO, "fix_5d_tensors.py")


def run_tool(script: str, argv: list) -> None:
    """One of the pack's tool scripts run as a program, with one fix for numpy >= 2.4 (the venv's): the script reads
    the scalar field general.file_type with int() on a 1-element array, which numpy 2.4 refuses; that field is
    handed to it as a 0-d array instead."""
    import runpy
    import gguf
    get_field = gguf.GGUFReader.get_field

    def scalar_file_type(self, key):
        f = get_field(self, key)
        if f is not None and key == "general.file_type":
            f = f._replace(parts=[p.reshape(()) if p.size == 1 else p for p in f.parts])
        return f
    gguf.GGUFReader.get_field = scalar_file_type
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")


def requantize(src: str, dst: str, qtype: str) -> None:
    """Every F16 matrix of a GGUF file whose rows fill whole blocks, quantized to `qtype` (gguf.quants); the rest
    (F32 vectors, small tensors, .modulation kept in F32 by convert.py) copied as they are."""
    import gguf
    import numpy as np
    q = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[q][0]
    reader = gguf.GGUFReader(src)
    field = reader.get_field("general.architecture")
    writer = gguf.GGUFWriter(path=None, arch=str(field.parts[field.data[-1]], encoding="utf-8"))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{qtype}"))
    for t in reader.tensors:
        data = np.asarray(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.F16 and data.ndim >= 2 and data.shape[-1] % block == 0:
            writer.add_tensor(t.name, gguf.quants.quantize(data.astype(np.float32), q), raw_dtype=q)
        else:
            writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file(path=dst)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "requantize":
        requantize(*sys.argv[2:])
    elif len(sys.argv) > 2 and sys.argv[1] == "tool":
        run_tool(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit(__doc__)
