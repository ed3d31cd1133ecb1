"""The registry package: `comfy node pack` (comfy-cli, pinned in requirements-dev.txt) run on a copy of this
working tree must hold the pack and what it needs, and nothing of the development material.

comfy-cli packs the git-tracked files minus the `.comfyignore` patterns; the copy is a fresh git repository of the
tracked and untracked-but-not-ignored files, so the test sees the working tree as a commit would.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
MAX_BYTES = 8 * 1024 * 1024          # the demo weights are ~7 MB of it
REQUIRED = {"__init__.py", "LICENSE", "README.md", "pyproject.toml", "requirements.txt", "web/sencache.js",
            "nodes/__init__.py", "sencache_core/__init__.py", "demo_model/__init__.py", "demo_model/data.py",
            "demo_model/weights/sencache_demo_wan.safetensors", "docs/METHOD.md", "docs/RESULTS.md"}
ALLOWED_TOP = {"__init__.py", "LICENSE", "README.md", "pyproject.toml", "requirements.txt", "nodes", "sencache_core",
               "web", "example_workflows", "docs", "demo_model"}
ALLOWED_DEMO = {"demo_model/__init__.py", "demo_model/data.py", "demo_model/weights/sencache_demo_wan.safetensors"}


def _comfy_cli() -> str | None:
    exe = os.environ.get("SENCACHE_COMFY_CLI")
    if exe:
        return exe
    here = pathlib.Path(sys.executable).parent / "comfy"
    return str(here) if here.exists() else shutil.which("comfy")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    exe = _comfy_cli()
    if exe is None:
        pytest.skip("comfy-cli is not installed (requirements-dev.txt pins it; SENCACHE_COMFY_CLI may name one)")
    work = tmp_path_factory.mktemp("pack")
    src = work / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=src, check=True)
    subprocess.run(git + ["add", "-A"], cwd=src, check=True)
    env = dict(os.environ, XDG_CONFIG_HOME=str(work / "config"), HOME=str(work / "home"))
    r = subprocess.run([exe, "--skip-prompt", "--no-enable-telemetry", "node", "pack"], cwd=src, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    z = src / "node.zip"
    with zipfile.ZipFile(z) as zf:
        names = sorted(i.filename for i in zf.infolist() if not i.is_dir())
        texts = {n: zf.read(n).decode("utf-8") for n in names if n.endswith((".py", ".md", ".js", ".json", ".toml", ".txt"))}
    print(f"\npackage: {len(names)} files, {z.stat().st_size} bytes\n" + "\n".join(names))
    return {"names": names, "size": z.stat().st_size, "texts": texts}


def test_package_holds_the_pack_and_nothing_else(package):
    names = set(package["names"])
    assert REQUIRED <= names, f"missing from the package: {sorted(REQUIRED - names)}"
    strays = sorted(n for n in names if n.split("/")[0] not in ALLOWED_TOP
                    or (n.startswith("demo_model/") and n not in ALLOWED_DEMO))
    assert not strays, f"development files in the package: {strays}"
    for d in ("nodes", "sencache_core"):       # every module of the pack, not just its __init__
        tracked = {p.relative_to(REPO).as_posix() for p in (REPO / d).glob("*.py")}
        assert tracked <= names, sorted(tracked - names)
    workflows = {p.relative_to(REPO).as_posix() for p in (REPO / "example_workflows").iterdir() if p.is_file()}
    assert workflows <= names
    assert package["size"] <= MAX_BYTES, f"package is {package['size']} bytes"


def test_package_links_resolve_inside_it(package):
    """Every relative link of the shipped Markdown points to a file the package holds."""
    names = set(package["names"])
    for name, text in package["texts"].items():
        if not name.endswith(".md"):
            continue
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = os.path.normpath(os.path.join(os.path.dirname(name), target)).replace("\\", "/")
            assert resolved in names or any(n.startswith(resolved + "/") for n in names), \
                f"{name} links to {target}, which is not in the package"


def test_nothing_shipped_points_outside_the_repository(package):
    for name, text in package["texts"].items():
        for bad in ("../shared", "shared/design", "issues show", "/work/"):
            assert bad not in text, f"{name} mentions {bad!r}"
        if name != "docs/RESULTS.md":    # the evidence keeps its history; nothing else does
            assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{name} carries a date"
            assert not re.search(r"\brounds? \d", text), f"{name} cites experiment rounds"
        if name.endswith(".py"):         # a comment citing METHOD.md must name the shipped docs/METHOD.md
            for m in re.finditer(r"(\S*)METHOD\.md", text):
                assert m.group(1).endswith("docs/"), f"{name} cites {m.group(0)!r}; use docs/METHOD.md"
