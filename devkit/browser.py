"""Headless Chromium driven over the DevTools protocol (websocket-client only; no browser downloads).

    with Chromium(url) as page:
        page.wait_for("!!(window.app && window.app.graph)")
        page.eval("app.graph._nodes.length")              # returnByValue; awaits promises
        page.screenshot("/path/shot.png")

Flags a headless Chromium needs in a container; a fresh --user-data-dir per browser; the browser runs in its own
process group and close() ends that group. CHROMIUM = /usr/bin/chromium unless $SENCACHE_CHROMIUM is set.
"""
from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

CHROMIUM = os.environ.get("SENCACHE_CHROMIUM") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--remote-allow-origins=*",
         "--remote-debugging-port=0"]


class BrowserError(RuntimeError):
    pass


def available() -> bool:
    return os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)


class Chromium:
    def __init__(self, url: str, width: int = 1600, height: int = 1000, timeout: float = 60.0):
        import websocket   # websocket-client
        self._profile = tempfile.mkdtemp(prefix="sencache_chromium_")
        self.log_path = pathlib.Path(self._profile) / "chromium.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
                                      url], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        port_file = pathlib.Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        ws_url = None
        while time.monotonic() < deadline and ws_url is None:
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited ({self.proc.returncode}): {self.log_path.read_text(errors='replace')[-2000:]}")
            if port_file.exists() and port_file.read_text().strip():
                port = port_file.read_text().split()[0]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                        pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
                    ws_url = pages[0]["webSocketDebuggerUrl"] if pages else None
                except OSError:
                    pass
            if ws_url is None:
                time.sleep(0.3)
        if ws_url is None:
            self.close()
            raise BrowserError("chromium's DevTools endpoint did not come up")
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self._id = 0
        self.console: list[str] = []
        self.send("Runtime.enable")
        self.send("Page.enable")

    def send(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        """One DevTools command; returns its result (console messages seen meanwhile go to self.console)."""
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"].get("args", [])
                self.console.append(msg["params"].get("type", "") + ": " + " ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif msg.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(msg["params"].get("exceptionDetails", {}))[:500])
            if msg.get("id") == my:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
        raise BrowserError(f"{method}: no answer within {timeout} s")

    def eval(self, expression: str, timeout: float = 60.0):
        """Evaluate JS in the page (promises awaited) and return the value (JSON round trip)."""
        r = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}, timeout)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError(f"JS error: {d.get('exception', {}).get('description') or d.get('text')}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, poll: float = 0.25):
        """Poll a JS expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.eval(expression)
                if last:
                    return last
            except BrowserError as e:
                last = e
            time.sleep(poll)
        raise BrowserError(f"timed out waiting for {expression!r} (last: {last!r}); console: {self.console[-10:]}")

    def screenshot(self, path: str | os.PathLike) -> pathlib.Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        except Exception:
            pass
        p = self.proc
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
            except ProcessLookupError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
