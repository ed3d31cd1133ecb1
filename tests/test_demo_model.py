"""The SenCache demo model: host-free data/latent/prompt code, the committed weights as ComfyUI sees them, the nodes."""
from __future__ import annotations

import importlib
import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from demo_model import data  # noqa: E402

WEIGHTS = REPO / "demo_model" / "weights" / "sencache_demo_wan.safetensors"


@pytest.fixture(scope="module")
def comfy_host(request, tmp_path_factory):
    """The session's ComfyUI host (tests/conftest.py `host`) when there is one, else boot it here (same way)."""
    try:
        return request.getfixturevalue("host")
    except pytest.FixtureLookupError:
        from devkit import host
        return host.boot(tmp_path_factory.mktemp("demo_comfy"), load_pack=True)


@pytest.fixture(scope="module")
def demo_model_patcher(comfy_host):
    import comfy.sd
    return comfy.sd.load_diffusion_model(str(WEIGHTS))


@pytest.fixture(scope="module")
def demo_nodes(comfy_host):
    from devkit import host
    return importlib.import_module(f"{host.pack_module().__name__}.nodes.demo")


# ------------------------------------------------------------------------------------------------- host-free

def test_latent_round_trip_exact():
    spec, clip = data.sample_pair(np.random.default_rng(7))
    assert clip.shape == (data.NUM_FRAMES, 3, data.FRAME_SIZE, data.FRAME_SIZE)
    assert clip.min() >= 0 and clip.max() <= 1
    z = data.encode_frames(clip)
    assert tuple(z.shape) == data.LATENT_SHAPE == (16, 8, 16, 16)
    assert (data.decode_latent(z) - torch.from_numpy(clip)).abs().max().item() < 1e-5
    zb = data.encode_frames(torch.from_numpy(clip)[None].repeat(2, 1, 1, 1, 1))
    assert tuple(zb.shape) == (2, *data.LATENT_SHAPE) and torch.equal(zb[0], z)
    basis = data.latent_basis()
    assert torch.allclose(basis.T @ basis, torch.eye(12, dtype=basis.dtype), atol=1e-12)


def test_data_is_deterministic_and_roughly_unit_scale():
    _, ctx1, lat1 = data.sample_batch(np.random.default_rng([0, 3]), 8)
    _, ctx2, lat2 = data.sample_batch(np.random.default_rng([0, 3]), 8)
    assert torch.equal(lat1, lat2) and torch.equal(ctx1, ctx2)
    assert ctx1.shape == (8, data.CONTEXT_LEN, data.TEXT_DIM)
    assert 0.3 < lat1.std().item() < 1.5 and abs(lat1.mean().item()) < 0.3


def test_layouts_place_objects_by_colour_order():
    """The prompt tokens carry no order, so the layouts place two objects by their colour's rank in COLOUR_NAMES,
    whatever order the prompt names them in. nested (the demo model's data): the first colour is the large outer
    shape, drawn first, the other a small shape inside it, all near the centre. sides: the first colour on the left."""
    for text in ("red circle and blue square on green", "blue square and red circle on green"):
        spec = data.parse_prompt(text)
        by_colour = {c: m for (c, _), m in zip(spec.objects, data.random_motion(np.random.default_rng(1), 2,
                                                                                  "nested", spec))}
        red, blue = by_colour["red"], by_colour["blue"]
        assert red["size"] > 2 * blue["size"] and red["layer"] < blue["layer"], text
        assert (red["x0"], red["y0"]) == (blue["x0"], blue["y0"])
        assert abs(red["x0"] - data.FRAME_SIZE / 2) <= 2.0 and abs(red["y0"] - data.FRAME_SIZE / 2) <= 2.0
        clip = data.render_clip(spec, list(by_colour.values()) if spec.objects[0][0] == "red"
                                else [by_colour["blue"], by_colour["red"]])
        centre = clip[0, :, 16, 16]                                   # the small blue square is on top
        assert np.abs(centre - np.asarray(data.COLOURS["blue"])).max() < 1e-6
        sides = {c: m["x0"] for (c, _), m in zip(spec.objects, data.random_motion(np.random.default_rng(1), 2,
                                                                                   "sides", spec))}
        assert sides["red"] < data.FRAME_SIZE / 2 < sides["blue"], (text, sides)
    one = data.random_motion(np.random.default_rng(2), 1, "nested", data.parse_prompt("white square on black"))[0]
    assert abs(one["x0"] - data.FRAME_SIZE / 2) <= 2.0 and one["size"] >= 7.5
    with pytest.raises(ValueError, match="layout"):
        data.random_motion(np.random.default_rng(0), 1, "diagonal")


def test_colour_coverage_on_training_clips_and_failures():
    """The prompt-following metric: rendered training clips pass it; the wrong background, a missing object or
    off-palette pixels fail it."""
    for i in range(20):
        spec, clip = data.sample_pair(np.random.default_rng(100 + i), layout=("nested", "sides")[i % 2])
        cov = data.colour_coverage(clip, spec)
        assert cov["pass"], (spec.text(), cov)
        assert set(cov["objects"]) == {c for c, _ in spec.objects}
        assert 0.30 <= cov["background"] < 1.0
    spec = data.parse_prompt("red circle and blue square on green")
    flat = torch.tensor(data.COLOURS["green"]).view(1, 3, 1, 1).expand(8, 3, 32, 32)
    cov = data.colour_coverage(flat, spec)
    assert not cov["pass"] and cov["background"] == 1.0 and cov["objects"] == {"red": 0.0, "blue": 0.0}
    wrong_bg = data.colour_coverage(flat, "red circle and blue square on white")
    assert wrong_bg["background"] == 0.0 and not wrong_bg["pass"]
    grey_mud = torch.full((8, 3, 32, 32), 0.3)                    # no palette colour within the distance
    assert data.colour_coverage(grey_mud, spec)["background"] == 0.0
    with pytest.raises(ValueError, match="frames"):
        data.colour_coverage(torch.zeros(3, 32, 32), spec)


def test_parse_prompt():
    spec = data.parse_prompt("Red circle and blue square on green")
    assert spec.objects == (("red", "circle"), ("blue", "square")) and spec.background == "green"
    assert data.parse_prompt(spec.text()) == spec
    assert data.parse_prompt("a yellow triangle, on a purple background").background == "purple"
    assert data.parse_prompt("white square, grey background").background == "gray"
    assert data.parse_prompt("orange circle").background == data.DEFAULT_BACKGROUND
    for _ in range(50):
        s = data.random_prompt(np.random.default_rng(_))
        assert data.parse_prompt(s.text()) == s


@pytest.mark.parametrize("bad", ["red dog on green", "red", "circle on blue", "red circle on red",
                                 "red circle and blue square and green triangle on white", "", "red circle on"])
def test_parse_prompt_errors(bad):
    with pytest.raises(ValueError) as e:
        data.parse_prompt(bad)
    msg = str(e.value)
    assert "circle" in msg and "purple" in msg          # lists the valid words


def test_encode_prompt():
    a = data.encode_prompt("red circle and blue square on green")
    assert a.shape == (3, 4096) and a.dtype == torch.float32
    assert torch.equal(a[[1, 0, 2]], data.encode_prompt("blue square and red circle on green"))
    assert not torch.equal(a, data.encode_prompt("red circle and blue square on white"))
    # fixed projection: pinned values (identical on every machine)
    p = data._projection()
    assert torch.equal(a[2], torch.from_numpy(p[2] + p[3 + data.COLOUR_NAMES.index("green")]))


# ------------------------------------------------------------------------------------------------- weights

def test_weights_metadata():
    from safetensors import safe_open
    assert WEIGHTS.exists(), "demo_model/weights/sencache_demo_wan.safetensors is committed"
    with safe_open(str(WEIGHTS), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        t = f.get_tensor("head.modulation")
    cfg = json.loads(meta["config"])
    assert cfg["dim"] == 128 and cfg["num_layers"] == 4 and cfg["in_dim"] == 16 and cfg["text_dim"] == 4096
    assert int(meta["steps"]) > 0 and float(meta["loss"]) < 1.0 and "seed" in meta and "data" in meta
    assert "blocks.3.ffn.2.weight" in keys and not any(k.startswith(("model.", "diffusion_model.")) for k in keys)
    assert t.dtype == torch.float32 and torch.isfinite(t).all()


def test_weights_load_as_wan21_t2v(demo_model_patcher):
    assert type(demo_model_patcher.model.model_config).__name__ == "WAN21_T2V"
    assert type(demo_model_patcher.model).__name__ == "WAN21"
    dm = demo_model_patcher.model.diffusion_model
    assert dm.dim == 128 and len(dm.blocks) == 4 and dm.num_heads == 1


def test_comfy_sampling_follows_the_prompt(demo_model_patcher):
    """A short real ComfyUI sampling run: the background takes the prompt's colour."""
    from demo_model.train import comfy_sample
    import comfy.latent_formats
    lat = comfy_sample(demo_model_patcher, ["red circle on green"], seed=0, steps=12)
    assert lat.shape == (1, *data.LATENT_SHAPE) and torch.isfinite(lat).all()
    frames = data.decode_latent(comfy.latent_formats.Wan21().process_in(lat))[0]     # [T, 3, 32, 32]
    border = torch.cat([frames[..., :2, :].flatten(2), frames[..., -2:, :].flatten(2)], dim=2)
    med = border.median(dim=2).values.median(dim=0).values                           # [3]
    palette = torch.tensor([data.COLOURS[c] for c in data.COLOUR_NAMES])
    nearest = data.COLOUR_NAMES[int((palette - med).norm(dim=1).argmin())]
    assert nearest == "green", med


def test_the_object_tokens_reach_the_model(demo_model_patcher):
    """The text embedding's first layer responds to the object tokens (it had died for them in earlier weights, which
    then drew colours from the noise), and the centre of a short sample takes the named object's colour."""
    from demo_model.train import comfy_sample, text_embedding_alive
    import comfy.latent_formats
    alive = text_embedding_alive(demo_model_patcher.model.diffusion_model)
    assert alive[0] > 0 and alive[2] > 0, alive
    palette = torch.tensor([data.COLOURS[c] for c in data.COLOUR_NAMES])
    for colour in ("yellow", "cyan"):
        lat = comfy_sample(demo_model_patcher, [f"{colour} circle on purple"], seed=0, steps=12)
        frames = data.decode_latent(comfy.latent_formats.Wan21().process_in(lat))[0]
        centre = frames[..., 13:19, 13:19].flatten(2).median(dim=2).values.median(dim=0).values
        assert data.COLOUR_NAMES[int((palette - centre).norm(dim=1).argmin())] == colour, (colour, centre)


# ------------------------------------------------------------------------------------------------- nodes

def test_prompt_node(demo_nodes):
    out = demo_nodes.SenCacheDemoPrompt.execute("red circle and blue square on green")
    (cond, extra), = out.result[0]
    assert cond.shape == (1, 3, 4096) and extra == {}
    assert torch.equal(cond[0], data.encode_prompt("red circle and blue square on green"))
    with pytest.raises(ValueError, match="unknown word"):
        demo_nodes.SenCacheDemoPrompt.execute("red banana")
    assert demo_nodes.DEMO_NODES == [demo_nodes.SenCacheDemoPrompt, demo_nodes.SenCacheDemoDecode]


def test_decode_node_inverts_comfy_latent_convention(demo_nodes):
    import comfy.latent_formats
    _, clip = data.sample_pair(np.random.default_rng(3))
    z = data.encode_frames(clip)[None]
    ksampler_latent = comfy.latent_formats.Wan21().process_out(z)        # what a KSampler would output
    img = demo_nodes.SenCacheDemoDecode.execute({"samples": ksampler_latent}, 1).result[0]
    assert img.shape == (8, 32, 32, 3)
    assert (img - torch.from_numpy(clip).movedim(1, -1)).abs().max().item() < 1e-4
    big = demo_nodes.SenCacheDemoDecode.execute({"samples": ksampler_latent}, 4).result[0]
    assert big.shape == (8, 128, 128, 3) and torch.equal(big[:, ::4, ::4], img)


@pytest.mark.skipif(importlib.util.find_spec("comfy_kitchen") is not None,
                    reason="training backpropagates through ComfyUI's WanModel; with comfy_kitchen installed (the "
                           "ComfyUI 0.18.1 host here) its RoPE kernel has no backward, so the demo model trains on 0.3.75")
def test_training_continues_from_the_committed_weights(tmp_path):
    """Another session has no optimizer state (none is committed): `--init-from` the committed EMA weights starts a
    new phase at their step count with a fresh optimizer and writes weights and a state of its own."""
    import os
    import subprocess
    from safetensors import safe_open
    with safe_open(str(WEIGHTS), "pt") as f:
        step0 = int(f.metadata()["steps"])
    out, state = tmp_path / "w.safetensors", tmp_path / "state.pt"
    proc = subprocess.run([sys.executable, "-m", "demo_model.train", "--init-from", str(WEIGHTS), "--steps",
                           str(step0 + 1), "--batch", "1", "--warmup", "1", "--weights", str(out), "--state",
                           str(state)], cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"new phase from {WEIGHTS} (step {step0}): fresh optimizer" in proc.stdout
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["steps"] == str(step0 + 1) and meta["phase_start"] == str(step0)
    assert meta["init_from"] == WEIGHTS.name
    st = torch.load(state, map_location="cpu", weights_only=False)
    assert st["step"] == step0 + 1 and st["opt"]["state"], "the new phase's own optimizer state"
