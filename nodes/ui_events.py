"""What the SenCache node publishes after every sampling run (SenCacheHolder publishers, see nodes/runtime.py).

NODE_PUBLISHERS, passed by the SenCache node to the holder it builds:
- log_summary: one INFO log line with the run's numbers;
- send_trace_event: the run's compact trace to the browser as a "sencache.trace" event. A no-op without a running
  server (library mode, tests): `server.PromptServer.instance` only exists once ComfyUI's server has been
  constructed. The event goes to the client that queued the prompt (as ComfyUI's own "executed"/"progress"
  messages do), or to all clients when that is unknown.

Payload (JSON): nodes.plotting.compact(trace, node_id) plus "prompt_id":
  node_id (the SenCache node's unique_id), computed, reused, total, speedup, speedup_kind, speedup_text (the
  label to show, nodes/speedup.py), wall_seconds, model_seconds, interrupted, no_reuse_reason (None unless the run
  reused nothing), status (learn mode: what the profile is doing, else None), problem (learn mode: why the learned
  profile could not be stored, else None), warning (SenCache stood aside for another step cache on the model, or
  never saw the run's model calls: nodes/step_caches.py; else None), settings (ε and K in effect),
  steps: [{sigma, reuse, S, eps, reason}, ...].

notify: a "sencache.notice" event {node_id, prompt_id, severity, text} for a problem of the node running now that
has no trace (the Sensitivity Calibrator's failed save_as).
"""
from __future__ import annotations

import logging
import sys

from .plotting import compact, summary_line

log = logging.getLogger("SenCache")
EVENT = "sencache.trace"
NOTICE = "sencache.notice"


def prompt_server():
    """ComfyUI's PromptServer instance, or None without a running server (library mode, tests)."""
    mod = sys.modules.get("server")       # ComfyUI's server module, only if the host imported it
    cls = getattr(mod, "PromptServer", None)
    return getattr(cls, "instance", None) if cls is not None else None


def payload(holder, trace) -> dict:
    return compact(trace, holder.node_id)


def log_summary(holder, trace) -> None:
    log.info(summary_line(trace))


def send_trace_event(holder, trace) -> None:
    """One "sencache.trace" event per finished sampling run."""
    server = prompt_server()
    if server is None or not hasattr(server, "send_sync"):
        return
    data = payload(holder, trace)
    data["prompt_id"] = getattr(server, "last_prompt_id", None)
    server.send_sync(EVENT, data, getattr(server, "client_id", None))


def notify(text: str, severity: str = "warn") -> None:
    """A "sencache.notice" event about the node running now (a problem the user must see: a profile that could not
    be saved): the web extension shows it as a toast and on the node. {node_id, prompt_id, severity, text}."""
    server = prompt_server()
    if server is None or not hasattr(server, "send_sync"):
        return
    server.send_sync(NOTICE, {"node_id": getattr(server, "last_node_id", None),
                              "prompt_id": getattr(server, "last_prompt_id", None), "severity": severity, "text": text},
                     getattr(server, "client_id", None))


NODE_PUBLISHERS = (log_summary, send_trace_event)
