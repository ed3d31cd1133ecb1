"""Run the real ComfyUI server with this pack, for workflow and browser tests.

    from devkit.server import ComfyServer
    with ComfyServer(tmp_path, tiny=("tiny_wan21_t2v",)) as srv:       # starts, waits for /object_info
        entry = srv.run(prompt)            # POST /prompt (API format), wait for it; the /history entry
        entry["outputs"]["9"]["images"]    # each node's UI output
        srv.post("/interrupt")             # any other endpoint

What start() prepares under base_dir (BASE), then runs from the ComfyUI folder (devkit.host.comfyui_dir()):
    python main.py --cpu --listen 127.0.0.1 --port P --base-directory BASE --database-url sqlite:///:memory:
                   --disable-api-nodes --disable-auto-launch
  BASE/custom_nodes/ComfyUI-SenCache   link to this repository (the pack as users install it)
  BASE/custom_nodes/sencache_devkit    link to devkit/comfy_test_nodes (test-only nodes, e.g.
                                       SenCacheDevRandomConditioning: CONDITIONING without a text encoder)
  BASE/custom_nodes/<name>             links to other packs named in `extra_nodes` (the compatibility tests;
                                       their packages go on the server's PYTHONPATH through `pythonpath`)
  BASE/models/diffusion_models/*.safetensors   the tiny checkpoints named in `tiny` (devkit.tiny_models)
  BASE/models/sencache/                        profile files (write your own there before start or any time)
  BASE/user/default/comfy.settings.json        {"Comfy.TutorialCompleted": true} (no first-run dialog)
  BASE/server.log                              the server's stdout+stderr
The server runs in its own process group and stop() ends that group (SIGTERM, then SIGKILL).
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

from . import host

REPO = host.REPO
PACK_LINK = "ComfyUI-SenCache"
TEST_NODES_LINK = "sencache_devkit"


class ServerError(RuntimeError):
    """The server did not start, refused a prompt, or a prompt failed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_models(names, folder: str | os.PathLike, python: str = sys.executable) -> None:
    """Write tiny checkpoints (devkit.tiny_models) that are missing, in a subprocess: building them imports
    comfy, which must not be booted into the caller's process with other folders."""
    folder = pathlib.Path(folder)
    missing = [n for n in names if not (folder / f"{n}.safetensors").exists()]
    if not missing:
        return
    code = ("import sys; from devkit import host, tiny_models; host.boot(load_pack=False)\n"
            "for n in sys.argv[2:]: tiny_models.write_checkpoint(n, sys.argv[1])")
    r = subprocess.run([python, "-c", code, str(folder), *missing], cwd=REPO, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise ServerError(f"writing tiny models {missing} failed:\n{r.stderr[-3000:]}")


class ComfyServer:
    def __init__(self, base_dir: str | os.PathLike, port: int | None = None, tiny=("tiny_wan21_t2v",),
                 extra_args=(), python: str = sys.executable, wrap=(), extra_nodes: dict | None = None,
                 pythonpath: tuple = ()):
        """wrap: a command the server command is appended to (e.g. `unshare -m sh -c '... exec "$@"' sh` to give it
        its own mounts); it must exec the server in the end."""
        self.base = pathlib.Path(base_dir).resolve()
        self.port = port or free_port()
        self.tiny = tuple(tiny)
        self.extra_args = list(extra_args)
        self.python = python
        self.wrap = list(wrap)
        self.extra_nodes = dict(extra_nodes or {})     # custom_nodes/<name> -> folder of another pack
        self.pythonpath = tuple(str(p) for p in pythonpath)   # put before the inherited PYTHONPATH
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"

    # -- life cycle ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create BASE's folders, links, models and settings (idempotent)."""
        b = self.base
        for sub in ("custom_nodes", "models/diffusion_models", "models/sencache", "input", "output", "temp", "user/default"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        links = {PACK_LINK: REPO, TEST_NODES_LINK: REPO / "devkit" / "comfy_test_nodes", **self.extra_nodes}
        for name, target in links.items():
            link = b / "custom_nodes" / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        settings = b / "user" / "default" / "comfy.settings.json"
        if not settings.exists():
            settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
        write_tiny_models(self.tiny, b / "models" / "diffusion_models", self.python)

    def start(self, timeout: float = 240.0) -> "ComfyServer":
        """Prepare BASE, start the server and wait until /object_info answers."""
        if self.proc is not None:
            return self
        self.prepare()
        cmd = [*self.wrap, self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
               "--disable-api-nodes", "--disable-auto-launch", *self.extra_args]
        log = open(self.log_path, "ab")
        # One intra-op thread: tiny test models gain nothing from more, and on a shared 2-core machine
        # oversubscription made workflow runs several times slower (measured 5 min -> 47 s for the examples).
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("OMP_NUM_THREADS", "1")
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([*self.pythonpath, *filter(None, [env.get("PYTHONPATH")])])
        self.proc = subprocess.Popen(cmd, cwd=host.comfyui_dir(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                info = self.get("/object_info/SenCacheApply", timeout=5)
                if "SenCacheApply" in info:
                    return self
                self.stop()
                raise ServerError(f"ComfyUI started without the SenCache nodes:\n{self.log_tail()}")
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        self.stop()
        raise ServerError(f"ComfyUI did not answer /object_info within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """End the server's process group (SIGTERM, then SIGKILL)."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- HTTP ------------------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30.0):
        """GET a JSON endpoint (e.g. "/object_info", "/history/<id>")."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict | None = None, timeout: float = 30.0):
        """POST JSON to an endpoint (e.g. "/interrupt"); its JSON answer, or None when it has no body."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = r.read()
        try:
            return json.loads(data) if data else None
        except ValueError:
            return None

    def post_prompt(self, prompt: dict, client_id: str | None = None) -> str:
        """Queue an API-format prompt; returns its prompt_id. ServerError with ComfyUI's node errors if refused.
        client_id: the websocket client (e.g. a browser page's api.clientId) that gets its progress/UI events."""
        body = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        req = urllib.request.Request(self.url + "/prompt", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())["prompt_id"]
        except urllib.error.HTTPError as e:
            raise ServerError(f"ComfyUI refused the prompt ({e.code}): {e.read().decode(errors='replace')[:4000]}") from e

    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.25, fail: bool = True) -> dict:
        """Wait until the prompt has finished (polling /history); returns its history entry
        ({"prompt", "outputs": {node_id: ui dict}, "status": {...}}). ServerError if it timed out, or if it failed
        (an error or an interrupt: status_str "error") unless fail is False."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                if entry["status"].get("status_str") == "error" and fail:
                    msgs = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
                    detail = msgs[-1][1] if msgs else entry["status"]
                    raise ServerError(f"prompt {prompt_id} failed: {json.dumps(detail)[:4000]}")
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited while running prompt {prompt_id}:\n{self.log_tail()}")
            time.sleep(poll)
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 300.0, client_id: str | None = None) -> dict:
        """post_prompt + wait: the finished prompt's history entry."""
        return self.wait(self.post_prompt(prompt, client_id), timeout)
