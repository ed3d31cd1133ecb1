"""Procedural "shapes" videos, their fixed latent code, and the prompt language of the SenCache demo model.

Host-free: imports numpy and torch only.

Videos: ``NUM_FRAMES`` (8) RGB frames of ``FRAME_SIZE`` x ``FRAME_SIZE`` (32 x 32) showing 1-2 moving, rotating
shapes (circle, square, triangle) of distinct colours on a plain coloured background, arranged by a layout
(``random_motion``): "nested" for the demo model, "free" for the validation model.

Latents (``encode_frames`` / ``decode_latent``): a fixed, invertible affine map, no VAE and no temporal compression:
``pixel_unshuffle(2)`` (3 x 32 x 32 -> 12 x 16 x 16), centre at 0.5, then an orthonormal 12 -> 16 channel map
(16 x 12 matrix with orthonormal columns from ``numpy.random.default_rng(LATENT_SEED)``) and a scale of
1 / ``LATENT_SCALE`` (0.45). A latent is ``[16, 8, 16, 16]`` (C, T, H, W) or, batched, ``[B, 16, 8, 16, 16]``,
roughly unit scale. The 12-dim image of the map is a subspace of the 16 channels; ``decode_latent`` is the
pseudo-inverse (projection onto that subspace) clamped to 0..1.

These latents are in the diffusion model's own space (what ``WanModel`` sees). ComfyUI's Wan21 latent_format
applies ``process_latent_in`` / ``process_latent_out`` (mean/std normalisation) around sampling, so a LATENT coming
out of a KSampler is ``Wan21().process_out(model_space)``: pass it through
``comfy.latent_formats.Wan21().process_in(latent)`` before ``decode_latent`` (the SenCacheDemoDecode node does).
Likewise a latent from ``encode_frames`` that is fed to a KSampler as latent_image must go through
``process_out`` first.

Prompts (``parse_prompt`` / ``encode_prompt``): ``"<colour> <shape> [and <colour> <shape>] on <colour>"``, e.g.
``"red circle and blue square on green"``. The conditioning is ``CONTEXT_LEN`` (3) tokens of ``TEXT_DIM`` (4096):
one token per object (an "empty" token when there is only one) and one for the background, each a fixed random
projection of a one-hot attribute vector (projection from ``numpy.random.default_rng(PROMPT_SEED)``, identical on
every machine). Unconditional (CFG negative / prompt dropout) = zeros of the same shape.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import torch
import torch.nn.functional as F

FRAME_SIZE = 32
NUM_FRAMES = 8
LATENT_CHANNELS = 16
LATENT_SIZE = FRAME_SIZE // 2
LATENT_SHAPE = (LATENT_CHANNELS, NUM_FRAMES, LATENT_SIZE, LATENT_SIZE)   # C, T, H, W
LATENT_SCALE = 0.45
LATENT_SEED = 20250501
PROMPT_SEED = 20250502
TEXT_DIM = 4096
CONTEXT_LEN = 3

COLOURS = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
    "orange": (1.00, 0.55, 0.05),
    "purple": (0.55, 0.15, 0.75),
    "cyan": (0.10, 0.85, 0.90),
    "gray": (0.50, 0.50, 0.50),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle")
DEFAULT_BACKGROUND = "black"
_ALIASES = {"grey": "gray", "circles": "circle", "squares": "square", "triangles": "triangle",
            "disc": "circle", "disk": "circle", "box": "square"}
_FILLER = {"a", "an", "the", "and", "with", "one", "two"}
_BG_PREFIX = {"on", "over", "against"}
_BG_SUFFIX = {"background", "bg"}


# ----------------------------------------------------------------------------------------------- prompts

@dataclasses.dataclass(frozen=True)
class PromptSpec:
    """Parsed prompt: 1-2 (colour, shape) objects and a background colour."""
    objects: tuple            # ((colour, shape), ...) with 1 or 2 entries
    background: str

    def text(self) -> str:
        objs = " and ".join(f"{c} {s}" for c, s in self.objects)
        return f"{objs} on {self.background}"


def valid_words() -> list[str]:
    return sorted(set(COLOUR_NAMES) | set(SHAPES) | set(_ALIASES) | _FILLER | _BG_PREFIX | _BG_SUFFIX)


def _err(msg: str) -> ValueError:
    return ValueError(f"{msg}. Prompts look like 'red circle and blue square on green': 1-2 objects "
                      f"'<colour> <shape>' and an optional background ('on <colour>', default {DEFAULT_BACKGROUND}). "
                      f"Colours: {', '.join(COLOUR_NAMES)}. Shapes: {', '.join(SHAPES)}. "
                      f"Other accepted words: {', '.join(sorted(set(_ALIASES) | _FILLER | _BG_PREFIX | _BG_SUFFIX))}.")


def parse_prompt(text: str) -> PromptSpec:
    """Parse e.g. "red circle and blue square on green" (case/punctuation-insensitive; "a green background" and
    "on a green background" work too). Raises ValueError listing the valid words for anything else."""
    if not isinstance(text, str):
        raise _err(f"prompt must be a string, got {type(text).__name__}")
    words = re.findall(r"[A-Za-z]+|[^\sA-Za-z,.;]+", text.lower())
    unknown = [w for w in words if _ALIASES.get(w, w) not in COLOURS and _ALIASES.get(w, w) not in SHAPES
               and w not in _FILLER and w not in _BG_PREFIX and w not in _BG_SUFFIX]
    if unknown:
        raise _err(f"unknown word(s) {unknown} in prompt {text!r}")
    objects, background, pending, bg_mode = [], None, None, False
    for w in words:
        w = _ALIASES.get(w, w)
        if w in _FILLER:
            continue
        if w in _BG_PREFIX:
            if pending is not None:
                raise _err(f"colour {pending!r} has no shape in {text!r}")
            bg_mode = True
        elif w in _BG_SUFFIX:
            if pending is not None:
                colour, pending = pending, None
            elif bg_mode and background is not None:
                continue                       # "on green background"
            else:
                raise _err(f"'{w}' without a colour in {text!r}")
            if background is not None and background != colour:
                raise _err(f"two backgrounds in {text!r}")
            background, bg_mode = colour, False
        elif w in COLOURS:
            if bg_mode:
                if background is not None:
                    raise _err(f"two backgrounds in {text!r}")
                background = w
            elif pending is not None:
                raise _err(f"colour {pending!r} has no shape in {text!r}")
            else:
                pending = w
        else:   # shape
            if bg_mode:
                raise _err(f"the background must be a colour, got {w!r} in {text!r}")
            if pending is None:
                raise _err(f"shape {w!r} has no colour in {text!r}")
            objects.append((pending, w))
            pending = None
    if pending is not None:
        raise _err(f"colour {pending!r} has no shape in {text!r}")
    if bg_mode and background is None:
        raise _err(f"'on' without a background colour in {text!r}")
    if not 1 <= len(objects) <= 2:
        raise _err(f"need 1 or 2 objects, got {len(objects)} in {text!r}")
    background = background or DEFAULT_BACKGROUND
    for colour, shape in objects:
        if colour == background:
            raise _err(f"the {colour} {shape} would be invisible on a {background} background")
    return PromptSpec(tuple(objects), background)


# one-hot attribute layout: [kind: object, empty, background] + colours + shapes
_KINDS = ("object", "empty", "background")
ATTR_DIM = len(_KINDS) + len(COLOUR_NAMES) + len(SHAPES)
_PROJ = None


def _projection() -> np.ndarray:
    global _PROJ
    if _PROJ is None:
        rng = np.random.default_rng(PROMPT_SEED)
        # each token sums <= 3 rows; / sqrt(3) keeps token entries ~unit variance
        _PROJ = (rng.standard_normal((ATTR_DIM, TEXT_DIM)) / np.sqrt(3.0)).astype(np.float32)
    return _PROJ


def _onehot(kind: str, colour: str | None = None, shape: str | None = None) -> np.ndarray:
    v = np.zeros(ATTR_DIM, dtype=np.float32)
    v[_KINDS.index(kind)] = 1.0
    if colour is not None:
        v[len(_KINDS) + COLOUR_NAMES.index(colour)] = 1.0
    if shape is not None:
        v[len(_KINDS) + len(COLOUR_NAMES) + SHAPES.index(shape)] = 1.0
    return v


def prompt_attributes(spec: PromptSpec) -> np.ndarray:
    """[CONTEXT_LEN, ATTR_DIM] one-hot rows: object 1, object 2 (or empty), background."""
    rows = [_onehot("object", c, s) for c, s in spec.objects]
    rows += [_onehot("empty")] * (2 - len(spec.objects))
    rows.append(_onehot("background", spec.background))
    return np.stack(rows)


def encode_prompt(text: str | PromptSpec) -> torch.Tensor:
    """Prompt text (or PromptSpec) -> float32 context [CONTEXT_LEN, TEXT_DIM] = [3, 4096].
    Token order does not matter to the model (cross-attention has no positions); the object order in the text
    therefore does not change the result's meaning."""
    spec = text if isinstance(text, PromptSpec) else parse_prompt(text)
    # rows of a fixed matrix summed in a fixed order: identical bits on every machine
    attrs = prompt_attributes(spec)
    proj = _projection()
    out = np.zeros((CONTEXT_LEN, TEXT_DIM), dtype=np.float32)
    for i, row in enumerate(attrs):
        for j in np.flatnonzero(row):
            out[i] += proj[j]
    return torch.from_numpy(out)


def unconditional_context() -> torch.Tensor:
    """The negative / dropped prompt: zeros [CONTEXT_LEN, TEXT_DIM]."""
    return torch.zeros(CONTEXT_LEN, TEXT_DIM)


def random_prompt(rng: np.random.Generator) -> PromptSpec:
    """1 or 2 objects (equal odds) with distinct colours, random shapes, background a different colour."""
    n = int(rng.integers(1, 3))
    colours = rng.permutation(len(COLOUR_NAMES))[: n + 1]
    objs = tuple((COLOUR_NAMES[int(c)], SHAPES[int(rng.integers(len(SHAPES)))]) for c in colours[:n])
    return PromptSpec(objs, COLOUR_NAMES[int(colours[n])])


# ----------------------------------------------------------------------------------------------- rendering

def _bounce(x0: np.ndarray, v: float, lo: float, hi: float) -> np.ndarray:
    """Positions x0 + v*t reflected into [lo, hi] (t = frame index)."""
    span = hi - lo
    if span <= 0:
        return np.full(NUM_FRAMES, (lo + hi) / 2)
    y = (x0 - lo + v * np.arange(NUM_FRAMES)) % (2 * span)
    return lo + np.where(y > span, 2 * span - y, y)


def _sdf(shape: str, px: np.ndarray, py: np.ndarray, size: float, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    x, y = c * px + s * py, -s * px + c * py          # rotate the point by -theta
    if shape == "circle":
        return np.sqrt(x * x + y * y) - size
    if shape == "square":
        h = 0.85 * size
        qx, qy = np.abs(x) - h, np.abs(y) - h
        return np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0)
    # equilateral triangle, inradius 0.6 * size (circumradius 1.2 * size), one vertex up at theta = 0
    r = 0.6 * size
    d = None
    for k in range(3):
        a = np.pi / 2 + np.pi + 2 * np.pi * k / 3     # outward edge normals at 270, 30, 150 degrees
        e = np.cos(a) * x + np.sin(a) * y - r
        d = e if d is None else np.maximum(d, e)
    return d


LAYOUTS = ("nested", "sides", "free")
DEFAULT_LAYOUT = "nested"


def _first_in_palette(spec: PromptSpec | None) -> bool:
    """True when the first named object's colour comes before the second's in COLOUR_NAMES (the prompt tokens carry
    no order, so the layouts place objects by this rank, which the model can read from the tokens)."""
    return spec is None or COLOUR_NAMES.index(spec.objects[0][0]) < COLOUR_NAMES.index(spec.objects[1][0])


def random_motion(rng: np.random.Generator, n_objects: int, layout: str = DEFAULT_LAYOUT,
                  spec: PromptSpec | None = None) -> list[dict]:
    """Per object: size, start position, velocity (px/frame, bouncing inside its box), angle, angular speed, and
    optionally box (x_lo, x_hi, y_lo, y_hi) and layer (drawing order, lowest first; default: prompt order).

    layout "nested" (the demo model's data): objects centred in the frame, drifting slowly, rotating. One object is
    large; with two, the object whose colour comes first in COLOUR_NAMES is a large shape and the other a small shape
    inside it. The model has no absolute position input (rotary position embedding only), so a layout that depends
    only on the distance from the frame centre is the one it learns fastest.
    layout "sides": two objects left and right of the centre (first colour in COLOUR_NAMES on the left), one object
    near the centre; slow motion.
    layout "free" (the validation model's data): sizes 4.5-7.5 anywhere in the frame, speed 0.6-2 px/frame."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out = []
    if layout == "free":
        for _ in range(n_objects):
            size = float(rng.uniform(4.5, 7.5))
            margin = 1.2 * size + 0.5
            lo, hi = margin, FRAME_SIZE - margin
            speed, direction = float(rng.uniform(0.6, 2.0)), float(rng.uniform(0, 2 * np.pi))
            out.append(dict(size=size, x0=float(rng.uniform(lo, hi)), y0=float(rng.uniform(lo, hi)),
                            vx=speed * np.cos(direction), vy=speed * np.sin(direction),
                            theta0=float(rng.uniform(0, 2 * np.pi)), omega=float(rng.uniform(-0.4, 0.4))))
        return out
    c = FRAME_SIZE / 2
    if layout == "nested":
        if n_objects == 1:
            sizes, layers = [float(rng.uniform(7.5, 9.0))], [0]
        else:
            outer, inner = float(rng.uniform(9.5, 10.5)), float(rng.uniform(4.3, 5.0))
            first = _first_in_palette(spec)
            sizes, layers = ([outer, inner], [0, 1]) if first else ([inner, outer], [1, 0])
        x0, y0 = c + float(rng.uniform(-2.0, 2.0)), c + float(rng.uniform(-2.0, 2.0))
        speed, direction = float(rng.uniform(0.0, 0.3)), float(rng.uniform(0, 2 * np.pi))
        box = (c - 2.0, c + 2.0, c - 2.0, c + 2.0)
        for size, layer in zip(sizes, layers):
            out.append(dict(size=size, x0=x0, y0=y0, vx=speed * np.cos(direction), vy=speed * np.sin(direction),
                            theta0=float(rng.uniform(0, 2 * np.pi)), omega=float(rng.uniform(-0.25, 0.25)),
                            box=box, layer=layer))
        return out
    if n_objects == 1:
        slots = [(c, c)]
    else:
        slots = [(0.25 * FRAME_SIZE, c), (0.75 * FRAME_SIZE, c)]
        if not _first_in_palette(spec):
            slots = slots[::-1]
    for sx, sy in slots[:n_objects]:
        size = float(rng.uniform(6.5, 8.0)) if n_objects == 1 else float(rng.uniform(4.8, 5.8))
        margin = 1.2 * size + 0.5
        half = 3.0 if n_objects == 1 else 2.0                 # horizontal play around the slot
        xlo, xhi = max(margin, sx - half), min(FRAME_SIZE - margin, sx + half)
        ylo, yhi = max(margin, sy - 4.0), min(FRAME_SIZE - margin, sy + 4.0)
        speed, direction = float(rng.uniform(0.2, 0.7)), float(rng.uniform(0, 2 * np.pi))
        out.append(dict(size=size, x0=float(rng.uniform(xlo, xhi)), y0=float(rng.uniform(ylo, yhi)),
                        vx=speed * np.cos(direction), vy=speed * np.sin(direction),
                        theta0=float(rng.uniform(0, 2 * np.pi)), omega=float(rng.uniform(-0.25, 0.25)),
                        box=(xlo, xhi, ylo, yhi)))
    return out


def render_clip(spec: PromptSpec, motion: list[dict]) -> np.ndarray:
    """Frames [T, 3, H, W] float32 in 0..1 (antialiased shapes, later objects drawn on top)."""
    T, S = NUM_FRAMES, FRAME_SIZE
    frames = np.empty((T, 3, S, S), dtype=np.float64)
    frames[:] = np.asarray(COLOURS[spec.background])[None, :, None, None]
    grid = np.arange(S) + 0.5
    gy, gx = grid[:, None], grid[None, :]
    order = sorted(range(len(motion)), key=lambda k: motion[k].get("layer", k))
    for (colour, shape), m in ((spec.objects[k], motion[k]) for k in order):
        margin = 1.2 * m["size"] + 0.5
        xlo, xhi, ylo, yhi = m.get("box", (margin, S - margin, margin, S - margin))
        xs = _bounce(m["x0"], m["vx"], xlo, xhi)
        ys = _bounce(m["y0"], m["vy"], ylo, yhi)
        rgb = np.asarray(COLOURS[colour])[:, None, None]
        for t in range(T):
            d = _sdf(shape, gx - xs[t], gy - ys[t], m["size"], m["theta0"] + m["omega"] * t)
            alpha = np.clip(0.5 - d, 0.0, 1.0)[None]
            frames[t] = frames[t] * (1 - alpha) + rgb * alpha
    return frames.astype(np.float32)


def sample_pair(rng: np.random.Generator, layout: str = DEFAULT_LAYOUT) -> tuple[PromptSpec, np.ndarray]:
    """One training pair: a random prompt and a clip [T, 3, 32, 32] matching it, random motion (see random_motion)."""
    spec = random_prompt(rng)
    return spec, render_clip(spec, random_motion(rng, len(spec.objects), layout, spec))


def sample_batch(rng: np.random.Generator, batch: int,
                 layout: str = DEFAULT_LAYOUT) -> tuple[list, torch.Tensor, torch.Tensor]:
    """(specs, context [B, 3, 4096], latents [B, 16, 8, 16, 16]) for training."""
    specs, clips = [], []
    for _ in range(batch):
        spec, clip = sample_pair(rng, layout)
        specs.append(spec)
        clips.append(clip)
    ctx = torch.stack([encode_prompt(s) for s in specs])
    lat = encode_frames(torch.from_numpy(np.stack(clips)))
    return specs, ctx, lat


# ----------------------------------------------------------------------------------------------- latent map

_BASIS = None


def latent_basis() -> torch.Tensor:
    """[16, 12] float64 with orthonormal columns (modified Gram-Schmidt of a seeded Gaussian; no LAPACK)."""
    global _BASIS
    if _BASIS is None:
        a = np.random.default_rng(LATENT_SEED).standard_normal((LATENT_CHANNELS, 12))
        q = np.zeros_like(a)
        for j in range(a.shape[1]):
            v = a[:, j].copy()
            for _ in range(2):                       # re-orthogonalise once for accuracy
                for i in range(j):
                    v -= float(np.sum(q[:, i] * v)) * q[:, i]
            q[:, j] = v / np.sqrt(np.sum(v * v))
        _BASIS = torch.from_numpy(q)
    return _BASIS


def encode_frames(frames) -> torch.Tensor:
    """Frames [T, 3, 32, 32] or [B, T, 3, 32, 32] (float, 0..1) -> latent [16, T, 16, 16] / [B, 16, T, 16, 16]
    float32 in the model's space."""
    x = torch.as_tensor(frames)
    single = x.ndim == 4
    if single:
        x = x[None]
    b, t = x.shape[:2]
    x = F.pixel_unshuffle(x.reshape(b * t, *x.shape[2:]).double(), 2)        # [BT, 12, 16, 16]
    z = torch.einsum("ck,nkhw->nchw", latent_basis(), (x - 0.5) / LATENT_SCALE)
    z = z.reshape(b, t, *z.shape[1:]).permute(0, 2, 1, 3, 4).float().contiguous()
    return z[0] if single else z


def decode_latent(latent, clamp: bool = True) -> torch.Tensor:
    """Latent [16, T, 16, 16] or [B, 16, T, 16, 16] (model space) -> frames [T, 3, 32, 32] / [B, T, 3, 32, 32]
    float32 clamped to 0..1 (pseudo-inverse of encode_frames)."""
    z = torch.as_tensor(latent)
    single = z.ndim == 4
    if single:
        z = z[None]
    b, c, t = z.shape[:3]
    z = z.double().permute(0, 2, 1, 3, 4).reshape(b * t, c, *z.shape[3:])
    x = torch.einsum("ck,nchw->nkhw", latent_basis(), z) * LATENT_SCALE + 0.5
    x = F.pixel_shuffle(x, 2).reshape(b, t, 3, FRAME_SIZE, FRAME_SIZE).float()
    if clamp:
        x = x.clamp(0.0, 1.0)
    return x[0] if single else x


# ----------------------------------------------------------------------------------------------- prompt following

COVERAGE_MAX_DISTANCE = 0.25      # RGB distance (0..1 units) within which a pixel counts as a palette colour
COVERAGE_MIN_OBJECT = 0.02        # each named object colour covers at least 2 % of the pixels
COVERAGE_MIN_BACKGROUND = 0.30    # the background colour at least 30 %


def colour_coverage(frames, spec: PromptSpec | str) -> dict:
    """How well frames [T, 3, H, W] (0..1) show the prompt's colours.

    Each pixel is given the nearest palette colour (COLOURS) when it lies within COVERAGE_MAX_DISTANCE of it, else no
    colour. Returns {"objects": {colour: fraction}, "background": fraction, "pass": bool}: pass when every object
    colour covers >= COVERAGE_MIN_OBJECT of all pixels (all frames) and the background colour >=
    COVERAGE_MIN_BACKGROUND."""
    spec = spec if isinstance(spec, PromptSpec) else parse_prompt(spec)
    x = torch.as_tensor(frames, dtype=torch.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"frames must be [T, 3, H, W], got {list(x.shape)}")
    pix = x.permute(0, 2, 3, 1).reshape(-1, 3)
    palette = torch.tensor([COLOURS[c] for c in COLOUR_NAMES], dtype=torch.float32)
    dist = torch.cdist(pix, palette)                                   # [N, 10]
    d, idx = dist.min(dim=1)
    idx = torch.where(d <= COVERAGE_MAX_DISTANCE, idx, torch.full_like(idx, -1))

    def frac(name):
        return float((idx == COLOUR_NAMES.index(name)).float().mean())
    objects = {c: frac(c) for c, _ in spec.objects}
    background = frac(spec.background)
    ok = all(v >= COVERAGE_MIN_OBJECT for v in objects.values()) and background >= COVERAGE_MIN_BACKGROUND
    return {"objects": objects, "background": background, "pass": bool(ok)}
