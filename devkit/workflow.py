"""ComfyUI workflows in the two formats: the UI format the frontend saves (example_workflows/*.json) and the API
format POST /prompt takes. Host-free: everything about node inputs comes from an /object_info dict.

    info = server.get("/object_info")
    g = Graph(info)                                          # build a UI-format workflow
    unet = g.node("UNETLoader", (0, 0), unet_name="wan.safetensors")
    ks = g.node("KSampler", (400, 0), steps=30)              # widgets by name; others take their defaults
    g.link(unet, 0, ks, "model"); g.note("Put the model in models/diffusion_models", (0, -200))
    wf = g.to_json()
    prompt = to_api(wf, info)                                # UI format -> API format
    render_thumbnail(wf, "x.jpg")                            # a small drawing of the graph

UI format (frontend 1.x, "version": 0.4): nodes carry `widgets_values` in the order of the node's widget inputs as
/object_info lists them (required, then optional, each in `input_order`); an INT with `control_after_generate`
is followed by one extra value ("fixed", "randomize", ...), a COMBO with `image_upload` by the upload button's
value ("image"). Sockets (MODEL, LATENT, ...) are in `inputs` with a link id; a widget turned into a socket keeps
its widgets_values entry and the link wins. `links` are [id, from_node, from_slot, to_node, to_slot, type].
Node modes: 0 always, 2 never (muted: left out of the prompt), 4 bypass (outputs pass the input of the same type).
Frontend-only nodes (Note, MarkdownNote, Reroute, PrimitiveNode) are not sent; links through a Reroute are
followed to their source.
"""
from __future__ import annotations

import json
import pathlib

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload")


class WorkflowError(ValueError):
    """A UI-format workflow does not fit the node definitions it is checked against."""


# -- node definitions (/object_info entries) --------------------------------------------------------------
def input_specs(info: dict):
    """(name, spec, optional) of a node's inputs in the frontend's order: required, then optional."""
    order = info.get("input_order") or {k: list(v) for k, v in info.get("input", {}).items()}
    for section in ("required", "optional"):
        defs = info.get("input", {}).get(section, {}) or {}
        for name in order.get(section, list(defs)):
            if name in defs:
                yield name, defs[name], section == "optional"


def _opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    t = spec[0]
    return isinstance(t, list) or t in WIDGET_TYPES


def extra_values(spec) -> int:
    """Widget values the frontend stores after this widget's own (seed control, upload button)."""
    o = _opts(spec)
    return int(bool(o.get("control_after_generate"))) + int(any(o.get(f) for f in UPLOAD_FLAGS))


def default_value(spec):
    t, o = spec[0], _opts(spec)
    if "default" in o:
        return o["default"]
    options = t if isinstance(t, list) else o.get("options") or []
    if options:
        return options[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(t if isinstance(t, str) else "", None)


# -- UI format -> API format ------------------------------------------------------------------------------
def to_api(workflow: dict, object_info: dict, include_muted: bool = False) -> dict:
    """The API-format prompt ({id: {"class_type", "inputs"}}) the frontend would queue for this workflow.
    Raises WorkflowError for unknown node types, widget count mismatches and missing required inputs."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {l[0]: l for l in workflow.get("links", [])}

    def active(n) -> bool:
        return n["type"] not in FRONTEND_ONLY and (include_muted or n.get("mode", 0) != MODE_NEVER)

    def source(link_id, want_type=None, depth=0):
        """[node id, slot] feeding this link, through Reroutes and bypassed nodes; None if muted/dangling."""
        if link_id is None or link_id not in links or depth > 64:
            return None
        _, src, slot, _, _, typ = links[link_id][:6]
        n = nodes.get(src)
        if n is None:
            return None
        if n["type"] == "Reroute":
            ins = n.get("inputs") or []
            return source(ins[0].get("link"), typ, depth + 1) if ins else None
        if n.get("mode", 0) == MODE_BYPASS:
            for inp in n.get("inputs") or []:
                if inp.get("type") == typ and inp.get("link") is not None:
                    return source(inp["link"], typ, depth + 1)
            return None
        if not active(n):
            return None
        return [str(src), slot]

    prompt = {}
    for n in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if not active(n) or n.get("mode", 0) == MODE_BYPASS:
            continue
        info = object_info.get(n["type"])
        if info is None:
            raise WorkflowError(f"node {n['id']}: type {n['type']!r} is not known to this ComfyUI")
        linked = {i["name"]: i.get("link") for i in n.get("inputs") or []}
        values = list(n.get("widgets_values") or [])
        if isinstance(n.get("widgets_values"), dict):
            raise WorkflowError(f"node {n['id']} ({n['type']}): dict widgets_values are not supported")
        pos, inputs = 0, {}
        for name, spec, optional in input_specs(info):
            if is_widget(spec):
                if pos >= len(values):
                    raise WorkflowError(f"node {n['id']} ({n['type']}): no widget value for {name!r} "
                                        f"(widgets_values has {len(values)} entries)")
                inputs[name] = values[pos]
                pos += 1 + extra_values(spec)
            src = source(linked.get(name))
            if src is not None:
                inputs[name] = src
            elif not is_widget(spec) and not optional:
                raise WorkflowError(f"node {n['id']} ({n['type']}): required input {name!r} is not connected")
        if pos != len(values):
            raise WorkflowError(f"node {n['id']} ({n['type']}): {len(values)} widget values, the node's widgets "
                                f"take {pos}")
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs, "_meta": {"title": n.get("title") or n["type"]}}
    return prompt


# -- building UI-format workflows -------------------------------------------------------------------------
class Node(dict):
    """A node of a Graph (the dict that goes into the JSON)."""


class Graph:
    """Builds a UI-format workflow from /object_info: widget order, defaults, socket lists and types."""

    def __init__(self, object_info: dict):
        self.info = object_info
        self.nodes: list[Node] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def node(self, type_: str, pos, size=(320, 0), title: str | None = None, mode: int = MODE_ALWAYS,
             seed_control: str = "fixed", color: str | None = None, **widgets) -> Node:
        info = self.info[type_]
        values, inputs = [], []
        known = set()
        for name, spec, _ in input_specs(info):
            known.add(name)
            if is_widget(spec):
                values.append(widgets[name] if name in widgets else default_value(spec))
                o = _opts(spec)
                if o.get("control_after_generate"):
                    values.append(seed_control)
                if any(o.get(f) for f in UPLOAD_FLAGS):
                    values.append("image")
            else:
                t = spec[0]
                inputs.append({"name": name, "type": t, "link": None})
        unknown = set(widgets) - known
        if unknown:
            raise WorkflowError(f"{type_}: no inputs named {sorted(unknown)}")
        outputs = [{"name": (info.get("output_name") or info["output"])[i], "type": t, "links": [], "slot_index": i}
                   for i, t in enumerate(info.get("output", []))]
        h = size[1] or 34 + 22 * max(len(inputs), len(outputs)) + 25 * len(values)
        n = Node(id=len(self.nodes) + 1, type=type_, pos=list(pos), size=[size[0], h], flags={}, order=0, mode=mode,
                 inputs=inputs, outputs=outputs, properties={"Node name for S&R": type_}, widgets_values=values)
        if title:
            n["title"] = title
        if color:
            n["color"], n["bgcolor"] = color, _darker(color)
        self.nodes.append(n)
        return n

    def note(self, text: str, pos, size=(420, 220), markdown: bool = True, title: str | None = None) -> Node:
        n = Node(id=len(self.nodes) + 1, type="MarkdownNote" if markdown else "Note", pos=list(pos), size=list(size),
                 flags={}, order=0, mode=MODE_ALWAYS, inputs=[], outputs=[], properties={}, widgets_values=[text],
                 color="#432", bgcolor="#653")
        if title:
            n["title"] = title
        self.nodes.append(n)
        return n

    def link(self, src: Node, slot: int, dst: Node, input_name: str) -> None:
        out = src["outputs"][slot]
        for inp in dst["inputs"]:
            if inp["name"] == input_name:
                break
        else:
            raise WorkflowError(f"{dst['type']} has no socket input {input_name!r}")
        if inp["type"] != out["type"] and "*" not in (inp["type"], out["type"]):
            raise WorkflowError(f"type mismatch {src['type']}.{out['name']} ({out['type']}) -> "
                                f"{dst['type']}.{input_name} ({inp['type']})")
        lid = len(self.links) + 1
        self.links.append([lid, src["id"], slot, dst["id"], dst["inputs"].index(inp), out["type"]])
        out["links"].append(lid)
        inp["link"] = lid

    def group(self, title: str, bounding, color: str = "#3f789e") -> None:
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": list(bounding), "color": color,
                            "font_size": 24, "flags": {}})

    def _order(self) -> None:
        deps = {n["id"]: set() for n in self.nodes}
        for _, a, _, b, _, _ in self.links:
            deps[b].add(a)
        done, k = set(), 0
        while len(done) < len(deps):
            ready = sorted(i for i, d in deps.items() if i not in done and d <= done)
            if not ready:
                raise WorkflowError("the graph has a cycle")
            for i in ready:
                next(n for n in self.nodes if n["id"] == i)["order"] = k
                k += 1
                done.add(i)

    def to_json(self, extra: dict | None = None) -> dict:
        self._order()
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": list(self.nodes),
                "links": self.links, "groups": self.groups, "config": {},
                "extra": {"ds": fit_view(self.nodes, self.groups), **(extra or {})}, "version": 0.4}


# Where a workflow must be fully visible when it opens: the part of ComfyUI's canvas that its menus, tabs, side bar,
# run toolbar and minimap leave free in a 1600×1000 browser window (viewport about 1600×857), in CSS pixels:
# left, top, right, bottom. tests/test_ui_browser.py checks the result in the real frontend.
VIEW_BOX = (75, 145, 1310, 830)
TITLE_H = 30      # LiteGraph's node title bar, drawn above a node's pos
# The frontend draws no text below scale 8 / 14 ≈ 0.571 (LGraphCanvas: min_font_size_for_lod / NODE_TEXT_SIZE).
MIN_SCALE = 0.575


def fit_view(nodes, groups=()) -> dict:
    """The saved view (`extra.ds`) that shows every node and group inside VIEW_BOX: the largest scale up to 1 that
    fits their bounding box, the box centred horizontally and placed at the top of the view."""
    boxes = [(n["pos"][0], n["pos"][1] - TITLE_H, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in nodes]
    boxes += [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
               g["bounding"][1] + g["bounding"][3]) for g in groups]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    left, top, right, bottom = VIEW_BOX
    pad = 12
    scale = min(1.0, (right - left - 2 * pad) / (x1 - x0), (bottom - top - 2 * pad) / (y1 - y0))
    scale = int(scale * 1000) / 1000             # round down: never larger than what fits
    if scale < MIN_SCALE:
        raise WorkflowError(f"the workflow ({x1 - x0:.0f} × {y1 - y0:.0f}) needs scale {scale} to fit the view; below "
                            f"{MIN_SCALE} the frontend stops drawing text: make the layout more compact")
    free_x = (right - left) / scale - (x1 - x0)
    return {"scale": scale, "offset": [round(left / scale + free_x / 2 - x0, 1), round((top + pad) / scale - y0, 1)]}


def _darker(hex_color: str) -> str:
    h = hex_color.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return "#{:02x}{:02x}{:02x}".format(int(r * 0.7), int(g * 0.7), int(b * 0.7))


# -- thumbnails -------------------------------------------------------------------------------------------
def render_thumbnail(workflow: dict, path: str | pathlib.Path, title: str = "", width_px: int = 640) -> None:
    """Draw the graph (node boxes, links, notes as paper) as a small JPEG for ComfyUI's template browser."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    nodes = {n["id"]: n for n in workflow["nodes"]}
    xs = [n["pos"][0] for n in nodes.values()] + [n["pos"][0] + n["size"][0] for n in nodes.values()]
    ys = [n["pos"][1] for n in nodes.values()] + [n["pos"][1] + n["size"][1] for n in nodes.values()]
    x0, x1, y0, y1 = min(xs) - 40, max(xs) + 40, min(ys) - 80, max(ys) + 40
    aspect = (y1 - y0) / (x1 - x0)
    fig = plt.figure(figsize=(width_px / 100, max(2.4, min(6.4, width_px / 100 * aspect))), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_facecolor("#202020")
    fig.patch.set_facecolor("#202020")
    px_per_unit = width_px / (x1 - x0)
    for grp in workflow.get("groups", []):
        gx, gy, gw, gh = grp["bounding"]
        ax.add_patch(FancyBboxPatch((gx, gy), gw, gh, boxstyle="round,pad=0,rounding_size=8", fc=grp.get("color", "#3f789e"),
                                    ec="none", alpha=0.18, zorder=0))
        ax.text(gx + 10, gy + 24, grp["title"], color="#d0d0ff", fontsize=7, va="center", zorder=3)
    for _, a, sa, b, sb, typ in workflow.get("links", []):
        na, nb = nodes[a], nodes[b]
        xa, ya = na["pos"][0] + na["size"][0], na["pos"][1] + 40 + 22 * sa
        xb, yb = nb["pos"][0], nb["pos"][1] + 40 + 22 * sb
        t = [i / 20 for i in range(21)]
        bx = [(1 - u) ** 3 * xa + 3 * (1 - u) ** 2 * u * (xa + 80) + 3 * (1 - u) * u ** 2 * (xb - 80) + u ** 3 * xb for u in t]
        by = [(1 - u) ** 3 * ya + 3 * (1 - u) ** 2 * u * ya + 3 * (1 - u) * u ** 2 * yb + u ** 3 * yb for u in t]
        ax.plot(bx, by, color=LINK_COLORS.get(typ, "#999999"), lw=1.2, alpha=0.9, zorder=1)
    for n in nodes.values():
        x, y = n["pos"]
        w, h = n["size"]
        ours = n["type"].startswith("SenCache")
        note = n["type"] in ("Note", "MarkdownNote")
        face = "#3a2f20" if note else ("#1f4d3a" if ours else "#353535")
        edge = "#8a6d3b" if note else ("#58d68d" if ours else "#555555")
        alpha = 0.45 if n.get("mode", 0) == MODE_NEVER else 1.0
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=12", fc=face, ec=edge,
                                    lw=2.0 if ours else 1.0, alpha=alpha, zorder=2))
        label = n.get("title") or n["type"]
        if note:
            label = (n.get("widgets_values") or [""])[0].splitlines()[0].lstrip("# ").replace("**", "") or label
        chars = max(3, int(w * px_per_unit / 4.6))
        label = label if len(label) <= chars else label[:chars - 1] + "…"
        ax.text(x + 8, y + 22, label, color="#f0f0f0" if not note else "#e8d8b0", fontsize=7, va="center", zorder=3,
                alpha=alpha)
    if title:
        ax.text(x0 + 30, y0 + 40, title, color="white", fontsize=13, weight="bold", va="center")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.axis("off")
    path = pathlib.Path(path)
    fig.savefig(path.with_suffix(".png"), facecolor=fig.get_facecolor())
    plt.close(fig)
    from PIL import Image
    Image.open(path.with_suffix(".png")).convert("RGB").save(path, quality=85)
    path.with_suffix(".png").unlink()


LINK_COLORS = {"MODEL": "#b39ddb", "CLIP": "#ffd500", "VAE": "#ff6e6e", "CONDITIONING": "#ffa931", "LATENT": "#ff9cf9",
               "IMAGE": "#64b5f6", "SENCACHE_PROFILE": "#58d68d", "SIGMAS": "#cdffcd", "SAMPLER": "#ecb4b4",
               "CLIP_VISION": "#a8dadc", "CLIP_VISION_OUTPUT": "#ad7452", "VIDEO": "#64b5f6"}


def save(workflow: dict, path: str | pathlib.Path) -> None:
    pathlib.Path(path).write_text(json.dumps(workflow, indent=1, ensure_ascii=False) + "\n")
