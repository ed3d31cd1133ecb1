"""Does the demo model draw what the prompt asks for? Colour coverage of uncached samples made with ComfyUI's sampler.

    .dev/venv/bin/python -m demo_model.check                       # the demo weights, 8 samples, both settings
    .dev/venv/bin/python -m demo_model.check --weights demo_model/weights/sencache_demo_wan_validation.safetensors

Samples: the 4 prompts of train.SAMPLE_PROMPTS x seeds 0, 1 (prompt-major), latent [1, 16, 8, 16, 16], scheduler
simple, 30 steps, ModelSamplingSD3 shift 8, sampler uni_pc, at CFG 6 (the demo template) and at CFG 1. A sample
passes when each named object colour covers >= 2 % of the pixels and the background colour >= 30 %
(data.colour_coverage); a setting passes when >= 6 of 8 samples pass (the same
share, rounded up, for other counts). --held-out: random prompts of the demo grammar and noise seeds 100, 101, ... instead.
Exit status 0 when every setting passes.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import tempfile
import time

import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from demo_model import data  # noqa: E402
from demo_model import train  # noqa: E402

SETTINGS = {
    "template": dict(sampler_name="uni_pc", scheduler="simple", steps=30, cfg=6.0, shift=8.0),
    "cfg1": dict(sampler_name="uni_pc", scheduler="simple", steps=30, cfg=1.0, shift=8.0),
}
SEEDS = (0, 1)
MIN_PASSING = 6
PASS_FRACTION = MIN_PASSING / 8     # 6 of 8: the bar; the same share for other sample counts


HELD_OUT_SEED = 20261202     # --held-out: prompts drawn with this numpy seed, noise seeds 100, 101, ...


def sample_list(n: int, held_out: bool = False) -> list[tuple[str, int]]:
    """The 4 sample prompts x seeds 0, 1 (prompt-major); with held_out, n random prompts of the demo grammar
    (data.random_prompt) with noise seeds 100.. instead: prompts and seeds no checkpoint was chosen on."""
    if held_out:
        import numpy as np
        rng = np.random.default_rng(HELD_OUT_SEED)
        pairs = [(data.random_prompt(rng).text(), 100 + i) for i in range(max(n, 1))]
    else:
        pairs = [(p, s) for p in train.SAMPLE_PROMPTS for s in SEEDS]
    if not 1 <= n <= len(pairs):
        raise ValueError(f"--samples must be 1..{len(pairs)}, got {n}")
    return pairs[:n]


def run_check(model_patcher, n_samples: int = 8, settings=tuple(SETTINGS), held_out: bool = False) -> dict:
    """{setting: {"samples": [{prompt, seed, objects, background, pass}], "passed": k, "pass": bool}}."""
    import comfy.latent_formats
    out = {}
    for name in settings:
        st = SETTINGS[name]
        rows = []
        for prompt, seed in sample_list(n_samples, held_out):
            lat = train.comfy_sample(model_patcher, [prompt], seed=seed, **st)
            frames = data.decode_latent(comfy.latent_formats.Wan21().process_in(lat))[0]
            cov = data.colour_coverage(frames, prompt)
            rows.append(dict(prompt=prompt, seed=seed, **cov))
        passed = sum(r["pass"] for r in rows)
        need = math.ceil(PASS_FRACTION * len(rows))
        out[name] = dict(settings=st, samples=rows, passed=passed, needed=need, **{"pass": passed >= need})
    return out


def format_report(result: dict, weights: str) -> str:
    lines = [f"colour coverage of uncached samples, weights {weights}",
             f"(object colour >= {data.COVERAGE_MIN_OBJECT:.0%}, background >= {data.COVERAGE_MIN_BACKGROUND:.0%}; "
             f"pixel = palette colour within RGB distance {data.COVERAGE_MAX_DISTANCE})"]
    for name, r in result.items():
        st = r["settings"]
        lines.append(f"\n[{name}] {st['sampler_name']}, {st['scheduler']}, {st['steps']} steps, cfg {st['cfg']:g}, "
                     f"shift {st['shift']:g}")
        for s in r["samples"]:
            objs = ", ".join(f"{c} {v:6.1%}" for c, v in s["objects"].items())
            bg = data.parse_prompt(s["prompt"]).background
            lines.append(f"  {'PASS' if s['pass'] else 'fail'}  seed {s['seed']}  {s['prompt']:<40} "
                         f"{objs:<32} bg {bg} {s['background']:6.1%}")
        lines.append(f"  -> {r['passed']}/{len(r['samples'])} samples pass (need {r['needed']}): "
                     f"{'BAR MET' if r['pass'] else 'bar not met'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(train.WEIGHTS))
    ap.add_argument("--samples", type=int, default=8, help="prompt x seed samples (1..8; any number with --held-out)")
    ap.add_argument("--held-out", action="store_true",
                    help="random prompts of the demo grammar and noise seeds 100.. instead of the 4 sample prompts")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {list(SETTINGS)}")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the numbers as JSON")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [s for s in settings if s not in SETTINGS]
    if bad or not settings:
        ap.error(f"unknown setting(s) {bad}; choose from {list(SETTINGS)}")
    sample_list(args.samples, args.held_out)
    torch.set_num_threads(args.threads)
    from devkit import host
    host.boot(tempfile.mkdtemp(prefix="sencache_check_"), load_pack=False)
    import comfy.sd
    mp = comfy.sd.load_diffusion_model(args.weights)
    t0 = time.time()
    result = run_check(mp, args.samples, settings, args.held_out)
    w = pathlib.Path(args.weights).resolve()
    shown = str(w.relative_to(REPO)) if w.is_relative_to(REPO) else str(w)
    print(format_report(result, shown))
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(dict(weights=shown, result=result), indent=1))
    return 0 if all(r["pass"] for r in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
