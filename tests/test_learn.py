"""Learn mode against the real ComfyUI (tiny Wan checkpoints through comfy.sd, the real sampler): a SenCache node with
no profile learns one from its first run(s), stores it in models/sencache/learned, finds it in later runs (also from
another node), and notices a changed model (other weights, a LoRA patch) and learns again."""
import logging
import os
import pathlib
import shutil

import numpy as np
import pytest
import torch

from devkit import sampling

LATENT = dict(frames=3, h=8, w=8)


def settings(sc, **kw):
    kw.setdefault("eps_main", 0.3)
    kw.setdefault("eps_start", kw["eps_main"])
    kw.setdefault("max_consecutive", 3)
    return sc.runtime.SenCacheSettings(**kw)


def _empty(d: pathlib.Path) -> None:
    if d.is_file() or d.is_symlink():
        d.unlink()
    d.mkdir(exist_ok=True)
    for f in list(d.iterdir()):
        shutil.rmtree(f) if f.is_dir() else f.unlink()


@pytest.fixture
def store(sc):
    """An empty models/sencache/learned for each test, and no learned profile kept in memory."""
    import folder_paths  # noqa: F401  (the host is booted by `sc`)
    d = pathlib.Path(sc.learn.store_dir())
    _empty(d)
    sc.learn.UNSTORED.clear()
    yield d
    _empty(d)
    sc.learn.UNSTORED.clear()


def learned_files(store):
    return sorted(p.name for p in store.glob("*.safetensors"))


def run(sc, model, conds, seed=3, latent=None, learning_runs=1, sampler="euler", estimator="trajectory", **kw):
    m, holder = sc.apply.apply_sencache(model, None, settings(sc, **kw), node_id="7", learning_runs=learning_runs,
                                        learn_estimator=estimator)
    out = sampling.sample(m, *conds, latent if latent is not None else sampling.wan_latent(**LATENT), seed=seed,
                          sampler_name=sampler)
    return out, holder


def test_learning_run_is_the_uncached_result_and_stores_the_profile(sc, wan, conds, store):
    ref = sampling.sample(wan, *conds, sampling.wan_latent(**LATENT), seed=3)
    out, holder = run(sc, wan, conds)
    assert torch.equal(out, ref)                               # bit for bit
    t = holder.last_trace
    assert t.computed == len(t.steps) == 8 and {s.reason for s in t.steps} == {"learning"}
    assert all(s.computed_conds == ["cond", "uncond"] or sorted(s.computed_conds) == ["cond", "uncond"] for s in t.steps)
    files = learned_files(store)
    assert len(files) == 1 and files[0].startswith("WAN21_16x3x8x8_ode_")
    assert t.config["profile_status"] == f"learned profile learned/{files[0]} (run 1 of 1); the next runs reuse evaluations"
    prof = sc.core.SensitivityProfile.load(store / files[0])
    meta = prof.metadata
    assert meta["source"] == "learned" and meta["runs"] == 1 and meta["sampler_family"] == "ode"
    assert meta["key"]["latent_shape"] == [16, 3, 8, 8] and meta["key"]["patches"] == ""
    assert meta["fingerprint"] == sc.model_info.model_facts(wan)["fingerprint"]
    # the Calibrator's on-trajectory estimator: one sample per evaluation after the first, at the σ before it
    assert len(meta["calibration_runs"]) == 1 and len(meta["calibration_runs"][0]) == 7
    assert prof.sigma_range[1] == pytest.approx(1.0) and prof.sigmas.size == 7
    assert meta["key"]["estimator"] == "trajectory"
    assert (prof.alpha_x + prof.alpha_t > 0).all()
    assert holder.profile is not None and holder.profile.metadata["name"] == f"learned/{files[0]}"
    # the compact trace (UI event, node strip) and the Visualizer's summary say what happened
    assert sc.plotting.compact(t, "7")["status"].startswith("learned profile learned/")
    assert "Profile: learned profile learned/" in sc.plotting.summary(t, holder.profile, "7")


def test_visualizer_shows_the_learning_run_and_the_learned_profile(sc, wan, conds, store):
    m, holder = sc.apply.apply_sencache(wan, None, settings(sc), node_id="9")
    sampling.sample(m, *conds, sampling.wan_latent(**LATENT), seed=3)
    image, text, trace = sc.visualize.visualize(m)
    assert image.shape[0] == 1 and image.shape[-1] == 3 and float(image.std()) > 0
    assert "computed 8/8" in text and "Profile: learned profile learned/" in text
    assert trace["status"].startswith("learned profile learned/") and trace["reused"] == 0
    sampling.sample(m, *conds, sampling.wan_latent(**LATENT), seed=4)       # the same node's next run
    _, text, trace = sc.visualize.visualize(m)
    assert "Profile: using learned profile learned/" in text and trace["status"].startswith("using learned profile")


def test_later_runs_find_the_profile_and_reuse(sc, wan, conds, store, caplog):
    run(sc, wan, conds, seed=3)
    (name,) = learned_files(store)
    with caplog.at_level(logging.INFO, logger="SenCache"):
        _, holder = run(sc, wan, conds, seed=11, target_speedup=2.0)   # a new node, another seed
    t = holder.last_trace
    assert t.config["profile_status"] == f"using learned profile learned/{name}"
    assert f"using learned profile learned/{name}" in caplog.text
    assert t.reused > 0 and "learning" not in {s.reason for s in t.steps}
    assert learned_files(store) == [name]                      # nothing relearned, nothing added
    # the fixed-ε mode uses the same stored profile: a huge ε reuses up to K, ε = 0 is the uncached result
    _, h2 = run(sc, wan, conds, seed=11, eps_main=1e6)
    assert h2.last_trace.reused > 0
    ref = sampling.sample(wan, *conds, sampling.wan_latent(**LATENT), seed=11)
    out, h3 = run(sc, wan, conds, seed=11, eps_main=0.0)
    assert torch.equal(out, ref) and h3.last_trace.reused == 0


def test_other_latent_shape_and_sampler_family_learn_their_own(sc, wan, conds, store):
    run(sc, wan, conds)
    run(sc, wan, conds, sampler="uni_pc")                       # a deterministic sampler: same family, found
    assert len(learned_files(store)) == 1
    _, h = run(sc, wan, conds, latent=sampling.wan_latent(frames=2, h=8, w=8))
    assert h.last_trace.config["profile_status"].startswith("learned profile learned/WAN21_16x2x8x8_ode_")
    _, h = run(sc, wan, conds, sampler="euler_ancestral")
    assert "_euler_ancestral_" in h.last_trace.config["profile_status"]
    assert {s.reason for s in h.last_trace.steps} == {"learning"}
    assert len(learned_files(store)) == 3


def test_learning_runs_merge_before_reuse(sc, wan, conds, store):
    _, h1 = run(sc, wan, conds, seed=1, learning_runs=2)
    assert h1.last_trace.config["profile_status"].endswith("(run 1 of 2)")
    _, h2 = run(sc, wan, conds, seed=2, learning_runs=2)
    assert h2.last_trace.config["profile_status"].endswith("(run 2 of 2); the next runs reuse evaluations")
    assert {s.reason for s in h2.last_trace.steps} == {"learning"}
    (name,) = learned_files(store)
    prof = sc.core.SensitivityProfile.load(store / name)
    assert prof.metadata["runs"] == 2 and [len(r) for r in prof.metadata["calibration_runs"]] == [7, 7]
    _, h3 = run(sc, wan, conds, seed=3, learning_runs=2, target_speedup=2.0)
    assert h3.last_trace.config["profile_status"] == f"using learned profile learned/{name}"
    assert h3.last_trace.reused > 0
    # asking for more learning runs than stored continues learning on top of them
    _, h4 = run(sc, wan, conds, seed=4, learning_runs=3)
    assert h4.last_trace.config["profile_status"].startswith("learned profile") and "(run 3 of 3)" in \
        h4.last_trace.config["profile_status"]


def test_a_lora_patch_is_noticed_and_relearned(sc, wan, conds, store, caplog):
    run(sc, wan, conds)
    (base,) = learned_files(store)
    lora = wan.clone()
    w = wan.model.diffusion_model.state_dict()
    key = next(k for k in w if k.endswith("ffn.0.weight"))
    lora.add_patches({f"diffusion_model.{key}": ("diff", (torch.full_like(w[key], 0.01),))}, 1.0)
    with caplog.at_level(logging.INFO, logger="SenCache"):
        _, h = run(sc, lora, conds)
    assert f"stored learned profile learned/{base} of this architecture, latent size and sampler family no longer " \
        "matches this model (other LoRA / weight patches)" in caplog.text
    assert {s.reason for s in h.last_trace.steps} == {"learning"}
    files = learned_files(store)
    assert len(files) == 2 and base in files
    new = next(f for f in files if f != base)
    assert sc.core.SensitivityProfile.load(store / new).metadata["key"]["patches"] != ""
    # the same LoRA again: found; other strength: a changed model again
    _, h = run(sc, lora, conds)
    assert h.last_trace.config["profile_status"] == f"using learned profile learned/{new}"
    lora2 = wan.clone()
    lora2.add_patches({f"diffusion_model.{key}": ("diff", (torch.full_like(w[key], 0.01),))}, 0.5)
    _, h = run(sc, lora2, conds)
    assert {s.reason for s in h.last_trace.steps} == {"learning"}
    # without the LoRA the first profile is still there
    _, h = run(sc, wan, conds)
    assert h.last_trace.config["profile_status"] == f"using learned profile learned/{base}"


def test_other_weights_of_the_same_architecture_are_noticed(sc, wan, conds, store, caplog, comfy_base):
    import comfy.sd
    from devkit import tiny_models
    run(sc, wan, conds)
    (base,) = learned_files(store)
    path = tiny_models.write_checkpoint("tiny_wan21_t2v", pathlib.Path(comfy_base) / "other_weights", seed=1)
    other = comfy.sd.load_diffusion_model(str(path))
    with caplog.at_level(logging.INFO, logger="SenCache"):
        _, h = run(sc, other, conds)
    assert "no longer matches this model (other weights)" in caplog.text
    assert {s.reason for s in h.last_trace.steps} == {"learning"}
    assert len(learned_files(store)) == 2


def test_interrupted_or_unreadable_learning_saves_nothing_and_never_breaks(sc, wan, conds, store, caplog):
    import comfy.model_management
    m, holder = sc.apply.apply_sencache(wan, None, settings(sc), node_id="7")
    calls = {"n": 0}

    def stop(*a):
        calls["n"] += 1
        if calls["n"] == 3:
            raise comfy.model_management.InterruptProcessingException()
    import comfy.sample
    latent = sampling.wan_latent(**LATENT)
    with pytest.raises(comfy.model_management.InterruptProcessingException), torch.inference_mode():
        comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 0), 8, 5.0, "euler", "simple", *conds, latent,
                            callback=stop, disable_pbar=True, seed=0)
    assert holder.last_trace.interrupted and learned_files(store) == []
    assert holder.last_trace.config["profile_status"] == "learning run interrupted"
    # a corrupt file in the store is skipped with a warning; learning goes on
    (store / "broken.safetensors").write_bytes(b"not a profile")
    with caplog.at_level(logging.WARNING, logger="SenCache"):
        _, h = run(sc, wan, conds)
    assert "skipping learned profile broken.safetensors" in caplog.text
    assert h.last_trace.config["profile_status"].startswith("learned profile")


def test_learned_profile_equals_the_calibrators_of_the_same_run(sc, wan, conds, store):
    """The learning run measures exactly what the Sensitivity Calibrator measures on the same sampling run."""
    _, holder = run(sc, wan, conds, seed=5)
    lat = {"samples": sampling.wan_latent(**LATENT)}
    with torch.inference_mode():
        _, cal = sc.calibrate.calibrate(wan, *conds, lat, 5, 8, 5.0, "euler", "simple", 1)
    learned = holder.profile
    for name in ("sigmas", "alpha_x", "alpha_t", "dx_per_sigma"):
        np.testing.assert_allclose(getattr(learned, name), getattr(cal, name), rtol=1e-6, err_msg=name)


def test_free_estimator_learns_without_an_extra_evaluation(sc, wan, conds, store):
    calls = {"n": 0}
    module = wan.model.diffusion_model
    original = module.forward

    def counting(*a, **k):
        calls["n"] += 1
        return original(*a, **k)
    module.forward = counting
    try:
        ref = sampling.sample(wan, *conds, sampling.wan_latent(**LATENT), seed=3)
        plain = calls["n"]
        out, holder = run(sc, wan, conds, estimator="free")
        assert calls["n"] - plain == plain            # the same model calls as the uncached run
    finally:
        module.forward = original
    assert torch.equal(out, ref)
    meta = holder.profile.metadata
    assert meta["key"]["estimator"] == "free" and meta["source"] == "learned"
    # 8 steps, pairs up to 4 apart from the 8 computed evaluations: 4·(8 − 4) + (3 + 2 + 1) = 22
    assert meta["estimator"]["pairs"] == len(meta["observations"]) == 22
    # a trajectory-learned profile of the same model is another key: both coexist
    run(sc, wan, conds)
    assert len(learned_files(store)) == 2


def test_node_schema_learn_mode(host):
    info = host.NODE_CLASS_MAPPINGS["SenCacheApply"].INPUT_TYPES()
    assert "profile" in info["optional"] and "learning_runs" in info["optional"]
    assert info["optional"]["learning_runs"][1]["default"] == 1


def test_a_run_learn_mode_cannot_key_computes_every_step(sc, wan, caplog):
    """begin_run never raises: a run it cannot key (here: no noise tensor) learns nothing and computes every step."""
    facts = sc.model_info.model_facts(wan)
    learner = sc.learn.ProfileLearner(facts)
    holder = sc.runtime.SenCacheHolder(None, settings(sc), facts["latent_channels"], run_class=learner.make_run)
    with caplog.at_level(logging.WARNING, logger="SenCache"):
        learner.begin_run(holder, object(), (None, None, None))
    assert "learn mode cannot handle this run" in caplog.text and not learner.learning
    run = learner.make_run(holder, wan.model.model_sampling, torch.tensor([1.0, 0.5, 0.0]))
    assert isinstance(run, sc.learn.LearningRun) and run.trace.config["profile_status"].startswith("not learning")


# ---- a store that cannot be written ---------------------------------------------------------------------------
def warnings_about(caplog, text):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


@pytest.mark.parametrize("blocked", ["a file where the folder goes", "a folder where the file goes"])
def test_a_store_that_cannot_be_written_says_so_once_and_stops_relearning(sc, wan, conds, store, caplog, blocked):
    """The learning run still gives the uncached result; its profile is kept in memory for this process and used by
    the next runs (which reuse evaluations instead of learning again); the failure is said once, naming the path."""
    if blocked == "a file where the folder goes":     # models/sencache/learned cannot be made
        store.rmdir()
        store.write_text("not a folder")
        where = str(store)
    else:                                             # the folder is there, the profile's file name is a folder
        run(sc, wan, conds)
        (name,) = learned_files(store)
        (store / name).unlink()
        (store / name).mkdir()
        where = str(store / name)
    ref = sampling.sample(wan, *conds, sampling.wan_latent(**LATENT), seed=3)
    with caplog.at_level(logging.INFO, logger="SenCache"):
        out, holder = run(sc, wan, conds)
        assert torch.equal(out, ref)                          # the run's output is the uncached one
        t = holder.last_trace
        assert t.interrupted is False and {s.reason for s in t.steps} == {"learning"}
        problem = t.config["profile_problem"]
        assert problem.startswith("learned the profile (run 1 of 1) but could not store it in "
                                  "models/sencache/learned: ") and where in problem, problem
        assert "kept in memory" in problem
        assert t.config["profile_status"].startswith("learned the profile (run 1 of 1), kept in memory: not stored")
        compact = sc.plotting.compact(t, "7")            # what the node strip and the toast get
        assert compact["problem"] == problem and compact["status"] == t.config["profile_status"]
        assert holder.profile is not None and holder.profile.metadata["runs"] == 1
        # the next runs (other nodes, other seeds) use the profile kept in memory: no relearning, reuse
        for seed in (4, 5):
            _, h = run(sc, wan, conds, seed=seed, target_speedup=2.0)
            assert h.last_trace.config["profile_status"].startswith("using the learned profile kept in memory")
            assert "learning" not in {s.reason for s in h.last_trace.steps} and h.last_trace.reused > 0
            assert "profile_problem" not in h.last_trace.config
    assert len(warnings_about(caplog, "could not store")) == 1            # said once, and nothing else
    assert len(warnings_about(caplog, "")) == 1
    assert not any("publisher" in r.getMessage() for r in caplog.records)
    if store.is_dir():                                                    # and no temporary file left behind
        assert [p.name for p in store.iterdir() if p.name != ".lock"] == [p.name for p in store.glob("*.safetensors")]


def test_runs_kept_in_memory_are_stored_with_the_next_learning_run(sc, wan, conds, store, caplog):
    """learning_runs 2: run 1 cannot be stored (a file in the way); once the folder can be made, run 2 stores both."""
    store.rmdir()
    store.write_text("not a folder")
    _, h1 = run(sc, wan, conds, seed=1, learning_runs=2)
    assert h1.last_trace.config["profile_status"].startswith("learned the profile (run 1 of 2), kept in memory")
    store.unlink()
    _, h2 = run(sc, wan, conds, seed=2, learning_runs=2)
    assert h2.last_trace.config["profile_status"].endswith("(run 2 of 2); the next runs reuse evaluations")
    (name,) = learned_files(store)
    prof = sc.core.SensitivityProfile.load(store / name)
    assert prof.metadata["runs"] == 2 and [len(r) for r in prof.metadata["calibration_runs"]] == [7, 7]
    assert sc.learn.UNSTORED == {}
    _, h3 = run(sc, wan, conds, seed=3, learning_runs=2)
    assert h3.last_trace.config["profile_status"] == f"using learned profile learned/{name}"


@pytest.mark.parametrize("estimator", ["trajectory", "free"])
def test_two_learners_at_once_keep_both_runs(sc, wan, conds, store, caplog, estimator):
    """Two learning runs of one key that both began before either stored (two ComfyUI processes sharing models/,
    here two learners driven in that order): the second to finish re-reads the store and adds its run."""
    import comfy.sample
    facts = sc.model_info.model_facts(wan)
    latent = sampling.wan_latent(**LATENT)
    a = sc.learn.ProfileLearner(facts, 2, estimator)
    b = sc.learn.ProfileLearner(facts, 2, estimator)
    pa = a.profile_for_run(wan, tuple(latent.shape[1:]), comfy.samplers.ksampler("euler"))
    pb = b.profile_for_run(wan, tuple(latent.shape[1:]), comfy.samplers.ksampler("euler"))
    assert pa is None and pb is None and a.status == b.status == "learning the profile (run 1 of 2)"
    for learner, seed in ((a, 1), (b, 2)):      # each measures its own run (its run_setup already done above)
        if learner.calibration is not None:
            learner.calibration.model_sampling = wan.model.model_sampling
        holder = sc.runtime.SenCacheHolder(None, settings(sc), facts["latent_channels"], run_class=learner.make_run,
                                           publishers=[learner.publish])
        with caplog.at_level(logging.INFO, logger="SenCache"):
            sampling.sample(sc.runtime.attach(wan, holder), *conds, latent, seed=seed)
    assert a.status.startswith("learned profile learned/") and a.status.endswith("(run 1 of 2)")
    assert b.status.endswith("(run 2 of 2); the next runs reuse evaluations"), b.status
    (name,) = learned_files(store)
    meta = sc.core.SensitivityProfile.load(store / name).metadata
    assert meta["runs"] == 2
    if estimator == "trajectory":
        assert [len(r) for r in meta["calibration_runs"]] == [7, 7]
    assert "another process stored 1 learning run of this model meanwhile; kept: the profile holds 2 runs" in caplog.text


def test_learning_runs_must_be_a_whole_number(sc, wan, wan_profile):
    facts = sc.model_info.model_facts(wan)
    for bad in (2.7, 0, -1, True):
        with pytest.raises(ValueError, match="learning_runs must be a whole number ≥ 1"):
            sc.learn.ProfileLearner(facts, bad)
    assert sc.learn.ProfileLearner(facts, 2.0).learning_runs == 2


def test_learned_profiles_follow_the_umask(sc, wan, conds, store):
    old = os.umask(0o027)
    try:
        run(sc, wan, conds)
    finally:
        os.umask(old)
    (name,) = learned_files(store)
    assert (store / name).stat().st_mode & 0o777 == 0o640
