"""A short check of the planned schedule (the SenCache Schedule node's default spacing) against fewer steps, on the
first test samples of one configuration, without the full quality benchmark's searches:

    .dev/venv/bin/python -m bench.planned_check 6

Configuration dpmpp_2m_40_cfg3_shift3; the tuned shifts per budget are the ones the quality benchmark chose on its
calibration samples for that configuration (results/quality/dpmpp_2m_40_cfg3_shift3.json, best_shift); the profile
is calibrated here on the same 4 calibration samples. Prints PSNR against the 40-step run and paired differences.
"""
import pathlib
import sys
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import torch, numpy as np, math
from bench import common as C
from bench import quality as Q
nodes, sc, _ = C.boot()
from bench import methods as M
torch.set_num_threads(1)
cname = "dpmpp_2m_40_cfg3_shift3"; cfg = Q.CONFIGS[cname]; N = cfg["steps"]
base = C.load_model(C.WEIGHTS); model = C.with_shift(base, cfg["shift"])
best = {20: 1.5, 13: 1.5, 10: 2.0}      # the benchmark's tuned shifts (results/quality/dpmpp_2m_40_cfg3_shift3.json)
profs = []
for t, s in Q.calibration_samples(4):
    pos, neg = C.conds(t)
    with torch.inference_mode():
        profs.append(sc.calibrate.calibrate(model, pos, neg, {"samples": C.empty_latent()}, s, N, cfg["cfg"], cfg["sampler"], cfg["scheduler"], 1)[1])
prof = sc.core.merge_profiles(profs)
ref_s = C.ksampler_sigmas(model, N, cfg["sampler"], cfg["scheduler"])
run = lambda m, t, s, steps, sig=None: C.sample(m, t, s, steps, cfg["cfg"], cfg["sampler"], cfg["scheduler"], sigmas=sig)
rows = {B: {"plan": [], "tuned": [], "same": []} for B in best}
for t, s in Q.test_samples(int(sys.argv[1])):
    ref = C.decode(run(model, t, s, N).latent)
    for B in best:
        rows[B]["plan"].append(C.psnr(C.decode(run(model, t, s, B, M.planned_sigmas(prof, B, ref_s)).latent), ref))
        rows[B]["tuned"].append(C.psnr(C.decode(run(C.with_shift(base, best[B]), t, s, B).latent), ref))
        rows[B]["same"].append(C.psnr(C.decode(run(model, t, s, B).latent), ref))
    print("sample done", flush=True)
for B, d in rows.items():
    p, tu, sa = map(np.asarray, (d["plan"], d["tuned"], d["same"]))
    se = lambda v: v.std(ddof=1) / math.sqrt(v.size)
    print(f"{cname} B={B}: planned {p.mean():.2f}  tuned-shift {tu.mean():.2f}  same-shift {sa.mean():.2f}  "
          f"planned-tuned {(p-tu).mean():+.2f} ± {se(p-tu):.2f}  planned-same {(p-sa).mean():+.2f} ± {se(p-sa):.2f}  (n={p.size})", flush=True)
