"""After every SenCache sampling run, send the run's compact trace to the browser as a "sencache.trace" event.

Registered once (idempotent) as a default listener of every SenCacheHolder (runtime.DEFAULT_LISTENERS).
A no-op without a running server (library mode, tests): `server.PromptServer.instance` only exists once
ComfyUI's server has been constructed. The event goes to the client that queued the prompt (as ComfyUI's own
"executed"/"progress" messages do), or to all clients when that is unknown.

Payload (JSON): sencache_core.plotting.compact(trace, node_id) plus "prompt_id":
  node_id (the SenCache node's unique_id), computed, reused, total, speedup (estimate), wall_seconds,
  model_seconds, interrupted, status (learn mode: what the profile is doing, else None),
  steps: [{sigma, reuse, S, eps, reason}, ...].
"""
from __future__ import annotations

import logging
import sys

from ..sencache_core.plotting import compact
from . import runtime

log = logging.getLogger("SenCache")
EVENT = "sencache.trace"


def _prompt_server():
    mod = sys.modules.get("server")       # ComfyUI's server module, only if the host imported it
    cls = getattr(mod, "PromptServer", None)
    return getattr(cls, "instance", None) if cls is not None else None


def payload(holder, trace) -> dict:
    return compact(trace, holder.node_id)


def send_trace_event(holder, trace) -> None:
    """SenCacheHolder listener: one "sencache.trace" event per finished sampling run."""
    server = _prompt_server()
    if server is None or not hasattr(server, "send_sync"):
        return
    data = payload(holder, trace)
    data["prompt_id"] = getattr(server, "last_prompt_id", None)
    server.send_sync(EVENT, data, getattr(server, "client_id", None))


def register() -> None:
    key = (__name__, "send_trace_event")     # by name: a re-imported module must not register twice
    if not any((getattr(f, "__module__", None), getattr(f, "__name__", None)) == key for f in runtime.DEFAULT_LISTENERS):
        runtime.DEFAULT_LISTENERS.append(send_trace_event)
