// SenCache frontend extension: shows each sampling run's trace on the SenCache node that ran it.
//
// The server sends "sencache.trace" after every sampling run (nodes/ui_events.py) with
//   { node_id, prompt_id, computed, reused, total, speedup, speedup_kind, speedup_text, wall_seconds, model_seconds,
//     interrupted, no_reuse_reason (optional), status (learn mode, optional), problem (learn mode: the learned profile
//     could not be stored, optional), warning (optional: SenCache stood aside for another step cache, or never saw the
//     model calls), steps: [{ sigma, reuse, S, eps, reason }, ...] }
// This extension stores it on the matching node as `node.sencacheTrace`, draws a compact per-step strip at
// the bottom of the node (one cell per model evaluation: blue = computed, green = reused; bar height = S/ε,
// the dashed line is S = ε; a full pale bar = computed without a score, e.g. first/final step), and shows a
// short toast with computed/total and the speed-up exactly as the server labels it (speedup_text: an estimate unless
// measured against an uncached run), plus why nothing was reused when the server says so (no_reuse_reason); a
// warning toast when the server sends a warning (another step cache on the model, or the model calls bypassed SenCache).
// Several SenCache nodes in one graph (e.g. the two Wan 2.2 experts) each keep and draw their own run.
// "sencache.notice" { node_id, prompt_id, severity, text } is a problem of a node that has no trace (the Calibrator's
// failed save_as): a toast, and the text drawn above that node's title until the node runs again.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "sencache.trace";
const NOTICE = "sencache.notice";
const NOTICE_COLOUR = "#ff8a65";
const NODE_TYPE = "SenCacheApply";
const COMPUTED = "#3465a4";
const REUSED = "#4e9a06";
const EPS_LINE = "#ef2929";
const STRIP_H = 64;        // px added below the widgets while a trace is shown

function findNode(nodeId) {
  const graph = app.graph;
  if (!graph || nodeId == null) return null;
  const direct = graph.getNodeById(nodeId) ?? graph.getNodeById(Number(nodeId));
  if (direct) return direct;
  // nodes inside subgraphs run with execution ids "outer:inner"
  let g = graph, node = null;
  for (const part of String(nodeId).split(":")) {
    node = g?.getNodeById(part) ?? g?.getNodeById(Number(part));
    if (!node) return null;
    g = node.subgraph;
  }
  return node;
}

function speedupText(t) {
  // the server's label (nodes/speedup.py) is the one definition; never relabel it here
  return typeof t.speedup_text === "string" ? t.speedup_text : "speed-up: not available";
}

function drawStrip(node, ctx) {
  const t = node.sencacheTrace;
  if (!t || node.flags?.collapsed) return;
  const [w, h] = node.size;
  const pad = 10;
  const top = h - STRIP_H + 2;
  const barTop = top + 16, barH = STRIP_H - 36;
  const n = Math.max(t.steps.length, 1);
  const cw = (w - 2 * pad) / n;
  ctx.save();
  ctx.font = "11px sans-serif";
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  ctx.fillStyle = "#bbbbbb";
  // learn mode: status says which learned profile the run used, or (as no_reuse_reason) what a learning run learned
  const head = `SenCache: computed ${t.computed}/${t.total} · ` +
               (t.no_reuse_reason ? `nothing reused: ${t.no_reuse_reason}` : speedupText(t)) +
               (t.warning && t.warning !== t.no_reuse_reason ? ` · ${t.warning}` : "") +
               (t.status && t.status !== t.no_reuse_reason ? ` · ${t.status}` : "") +
               (t.interrupted ? " · interrupted" : "");
  ctx.fillText(head, pad, top + 11, w - 2 * pad);
  ctx.fillStyle = "rgba(0,0,0,0.25)";
  ctx.fillRect(pad, barTop, w - 2 * pad, barH);
  t.steps.forEach((s, i) => {
    const x = pad + i * cw;
    const gap = cw > 4 ? 1 : 0;
    let frac = 1, alpha = 0.45;     // no score: full pale bar
    if (typeof s.S === "number" && s.eps > 0) {
      frac = Math.min(s.S / s.eps, 2) / 2;
      alpha = 1;
    } else if (typeof s.S === "number") {
      frac = s.S > 0 ? 1 : 0;
      alpha = 1;
    }
    const bh = Math.max(2, frac * barH);
    ctx.globalAlpha = alpha;
    ctx.fillStyle = s.reuse ? REUSED : COMPUTED;
    ctx.fillRect(x + gap, barTop + barH - bh, Math.max(cw - 2 * gap, 1), bh);
  });
  ctx.globalAlpha = 1;
  ctx.strokeStyle = EPS_LINE;
  ctx.setLineDash([4, 3]);
  ctx.beginPath();
  ctx.moveTo(pad, barTop + barH / 2);
  ctx.lineTo(w - pad, barTop + barH / 2);
  ctx.stroke();
  ctx.setLineDash([]);
  // legend under the bars
  ctx.font = "10px sans-serif";
  let x = pad;
  const y = barTop + barH + 12;
  for (const [mark, colour, label] of [["■", COMPUTED, "computed"], ["■", REUSED, "reused"], ["- -", EPS_LINE, "S = ε"],
                                       ["", null, "bar height: S/ε"]]) {
    if (mark) {
      ctx.fillStyle = colour;
      ctx.fillText(mark, x, y);
      x += ctx.measureText(mark).width + 3;
    }
    ctx.fillStyle = "#aaaaaa";
    ctx.fillText(label, x, y);
    x += ctx.measureText(label).width + 10;
  }
  ctx.restore();
}

function showTrace(detail) {
  const node = findNode(detail.node_id);
  if (node && node.type === NODE_TYPE) {
    node.sencacheTrace = detail;
    const min = node.computeSize();
    if (node.size[1] < min[1]) node.setSize([Math.max(node.size[0], min[0]), min[1]]);
    node.setDirtyCanvas?.(true, true);
  }
  app.graph?.setDirtyCanvas?.(true, true);
  const who = node?.title ? `${node.title} (#${detail.node_id})` : `node #${detail.node_id}`;
  app.extensionManager?.toast?.add?.({
    severity: detail.interrupted || detail.problem || detail.warning ? "warn" : "info",
    summary: "SenCache",
    detail: `${who}: computed ${detail.computed}/${detail.total} model evaluations, ${speedupText(detail)}` +
            (detail.interrupted ? ", run interrupted" : "") +
            (detail.problem ? `. ${detail.problem}` :
             (detail.no_reuse_reason ? `. Nothing reused: ${detail.no_reuse_reason}` : "") +
             (detail.warning && detail.warning !== detail.no_reuse_reason ? `. ${detail.warning}` : "") +
             (detail.status && detail.status !== detail.no_reuse_reason ? `. ${detail.status}` : "")),
    life: detail.problem || detail.warning ? 20000 : detail.no_reuse_reason ? 12000 : 6000,
  });
}

// Draw after the node's own foreground; a drawing error is logged, never thrown into the canvas loop.
function chainDraw(nodeType, draw, what) {
  const before = nodeType.prototype.onDrawForeground;
  nodeType.prototype.onDrawForeground = function (ctx, ...rest) {
    const r = before?.apply(this, [ctx, ...rest]);
    try {
      draw(this, ctx);
    } catch (err) {
      console.warn(`SenCache: ${what} drawing failed`, err);
    }
    return r;
  };
}

function showNotice(detail) {
  const node = findNode(detail.node_id);
  if (node) {
    node.sencacheNotice = detail.text;
    node.setDirtyCanvas?.(true, true);
  }
  const who = node?.title ? `${node.title} (#${detail.node_id})` : `node #${detail.node_id}`;
  app.extensionManager?.toast?.add?.({
    severity: detail.severity || "warn", summary: "SenCache", detail: `${who}: ${detail.text}`, life: 20000,
  });
}

function drawNotice(node, ctx) {
  // above the title bar (wrapped to the node's width), so it covers none of the node's widgets or previews
  if (!node.sencacheNotice) return;
  ctx.save();
  ctx.font = "12px sans-serif";
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  ctx.fillStyle = NOTICE_COLOUR;
  const width = Math.max(node.size[0], 320);
  const lines = [];
  let line = "⚠";
  for (const word of String(node.sencacheNotice).split(/\s+/)) {
    if (ctx.measureText(`${line} ${word}`).width > width && line) {
      lines.push(line);
      line = word;
    } else {
      line = `${line} ${word}`;
    }
  }
  lines.push(line);
  let y = -(globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30) - 6;
  for (const l of lines.reverse()) {
    ctx.fillText(l, 0, y);
    y -= 15;
  }
  ctx.restore();
}


app.registerExtension({
  name: "SenCache.trace",
  setup() {
    api.addEventListener(EVENT, (e) => {
      try {
        showTrace(e.detail);
      } catch (err) {
        console.warn("SenCache: could not show the trace", err);
      }
    });
    api.addEventListener(NOTICE, (e) => {
      try {
        showNotice(e.detail);
      } catch (err) {
        console.warn("SenCache: could not show the notice", err);
      }
    });
    api.addEventListener("executing", (e) => {
      // a node that runs again starts without its former notice
      const id = e.detail?.display_node ?? e.detail?.node ?? e.detail;
      const node = id == null ? null : findNode(id);
      if (node?.sencacheNotice) {
        node.sencacheNotice = null;
        node.setDirtyCanvas?.(true, true);
      }
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (typeof nodeData?.name === "string" && nodeData.name.startsWith("SenCache")) {
      chainDraw(nodeType, drawNotice, "notice");
    }
    if (nodeData?.name !== NODE_TYPE) return;
    const computeSize = nodeType.prototype.computeSize;
    nodeType.prototype.computeSize = function (...args) {
      const size = computeSize.apply(this, args);
      if (this.sencacheTrace) size[1] += STRIP_H;
      return size;
    };
    chainDraw(nodeType, drawStrip, "strip");
  },
});
