"""Bad input at the pack's edges, through the real ComfyUI host (library mode) and the nodes as ComfyUI registered
them: each case gets a clear error before any work is done, or a warning and a safe fallback."""
from __future__ import annotations

import logging
import math
import os

import numpy as np
import pytest

from devkit import sampling

CAL_INPUTS = dict(seed=0, steps=4, cfg=5.0, sampler_name="euler", scheduler="simple", runs=1, denoise=1.0)
SC_INPUTS = dict(eps_main=0.1, eps_start=0.02, eps_switch_percent=0.2, max_consecutive_reuse=3,
                 reuse_start_percent=0.0, reuse_end_percent=1.0, protect_final_step=True, use_high_percentile=False,
                 reuse_mode="output", target_speedup=0.0)


@pytest.fixture
def counted(wan):
    """A clone of the tiny Wan that counts its diffusion-model calls (through ComfyUI's wrapper mechanism)."""
    import comfy.patcher_extension
    m = wan.clone()
    calls = []

    def count(executor, *args, **kwargs):
        calls.append(1)
        return executor(*args, **kwargs)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_count", count)
    return m, calls


@pytest.fixture
def profile_dir(sc):
    return sc.profiles.profile_dir()


def _calibrator(host, model, conds, **over):
    node = host.NODE_CLASS_MAPPINGS["SenCacheCalibrator"]
    kw = dict(CAL_INPUTS, save_as="")
    kw.update(over)
    return node.execute(model=model, positive=conds[0], negative=conds[1],
                        latent_image={"samples": sampling.wan_latent()}, **kw)


@pytest.mark.parametrize("save_as, why", [("../escape", "inside models/sencache"), ("/abs/path", "inside"),
                                          ("a<script>", "may not contain"), ("sub/", "ends with '/'"),
                                          ("x" * 300, "too long: the file name"), ("y" * 300 + "/p", "too long: the folder"),
                                          ("   ", "blank"), ("\t", "blank")])
def test_calibrator_refuses_a_bad_save_as_before_calibrating(host, sc, counted, conds, save_as, why):
    model, calls = counted
    with pytest.raises(sc.core.ProfileError, match="filename prefix") as e:
        _calibrator(host, model, conds, save_as=save_as)
    assert why in str(e.value)
    assert calls == []          # not one model evaluation was spent


def test_save_profile_name_length_is_the_file_systems_limit(host, sc, wan_profile, profile_dir):
    """The limit is the file system's NAME_MAX in bytes, counting the counter and extension Save Profile adds."""
    name_max = os.pathconf(profile_dir, "PC_NAME_MAX")
    room = name_max - len(sc.profiles.COUNTER_SUFFIX)
    node = host.NODE_CLASS_MAPPINGS["SenCacheSaveProfile"]
    out = node.execute(profile=wan_profile, filename_prefix="n" * room)
    ui = out.ui if isinstance(out.ui, dict) else out.ui.as_dict()
    saved = os.path.join(profile_dir, ui["text"][0].split("models/sencache/", 1)[1])
    try:
        assert len(os.path.basename(saved)) == name_max and os.path.isfile(saved)
        for prefix in ("n" * (room + 1), "σ" * (room // 2 + 1)):        # bytes, not characters
            with pytest.raises(sc.core.ProfileError, match=f"longer than the {name_max} bytes"):
                node.execute(profile=wan_profile, filename_prefix=prefix)
        with pytest.raises(sc.core.ProfileError, match="blank"):
            node.execute(profile=wan_profile, filename_prefix="   ")
    finally:
        os.remove(saved)


def test_saved_profiles_follow_the_umask(host, sc, wan, conds, wan_profile, profile_dir):
    old = os.umask(0o002)
    try:
        out = host.NODE_CLASS_MAPPINGS["SenCacheSaveProfile"].execute(profile=wan_profile, filename_prefix="umask/p")
        cal = _calibrator(host, wan, conds, save_as="umask/c")
    finally:
        os.umask(old)
    names = [(o.ui if isinstance(o.ui, dict) else o.ui.as_dict())["text"][0].split("models/sencache/", 1)[1].split()[0]
             for o in (out, cal)]
    try:
        for n in names:
            assert os.stat(os.path.join(profile_dir, n)).st_mode & 0o777 == 0o664, n
        assert sorted(os.listdir(os.path.join(profile_dir, "umask"))) == ["c_00001.safetensors", "p_00001.safetensors"]
    finally:
        for n in names:
            os.remove(os.path.join(profile_dir, n))


@pytest.mark.parametrize("field", ["steps", "runs"])
def test_calibrator_refuses_non_whole_counts(host, counted, conds, field):
    model, calls = counted
    with pytest.raises(ValueError, match="whole numbers"):
        _calibrator(host, model, conds, **{field: 2.7})
    assert calls == []


def _raw_profile(path, **arrays):
    """A profile file as another tool might write it: our format, any arrays (no checks on the way)."""
    import json
    from safetensors.numpy import save_file
    n = 4
    base = dict(sigmas=np.linspace(0.1, 1.0, n), alpha_x=np.full(n, 0.5), alpha_t=np.full(n, 2.0))
    base.update(arrays)
    for k in ("alpha_x_hi", "alpha_t_hi", "alpha_x_std", "alpha_t_std", "dx_per_sigma", "counts"):
        base.setdefault(k, np.ones_like(base["alpha_x"]))
    save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in base.items()}, str(path),
              metadata={"sencache_profile": json.dumps({"format_version": 1, "source": "test"}),
                        "format_version": "1"})


@pytest.mark.parametrize("arrays, reason", [
    (dict(alpha_x=np.zeros(4), alpha_t=np.zeros(4), alpha_x_hi=np.zeros(4), alpha_t_hi=np.zeros(4)),
     "α_x and α_t are 0 at every σ"),
    (dict(alpha_x=np.full((2, 2), 0.5)), "'alpha_x' has shape (2, 2); a profile's arrays are 1-D"),
    (dict(sigmas=np.linspace(0.1, 1.0, 4).reshape(2, 2)), "'sigmas' has shape (2, 2)"),
    (dict(sigmas=np.array([0.1, 1.0, 10.0, 1e9])), "reaches σ = 1e+09, far beyond"),
    (dict(sigmas=np.zeros(1), alpha_x=np.ones(1), alpha_t=np.ones(1)), "only σ = 0"),
    (dict(alpha_t=np.array([1.0, -1.0, 1.0, 1.0])), "'alpha_t' contains negative values"),
])
def test_profiles_are_checked_for_meaning_with_the_exact_reason(host, sc, profile_dir, arrays, reason):
    path = os.path.join(profile_dir, "odd_profile.safetensors")
    _raw_profile(path, **arrays)
    try:
        with pytest.raises(sc.core.ProfileError) as e:
            host.NODE_CLASS_MAPPINGS["SenCacheLoadProfile"].execute(profile_name="odd_profile.safetensors",
                                                                    npz_preset="auto")
        assert reason in str(e.value)
        assert "strictly increasing" not in str(e.value)
    finally:
        os.remove(path)


def test_calibrator_refuses_a_symlinked_save_as_folder_before_calibrating(host, sc, counted, conds, profile_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    link = os.path.join(profile_dir, "linked_cal")
    os.symlink(outside, link)
    try:
        model, calls = counted
        with pytest.raises(sc.core.ProfileError, match="symbolic link"):
            _calibrator(host, model, conds, save_as="linked_cal/p")
        assert calls == [] and list(outside.iterdir()) == []
    finally:
        os.unlink(link)


@pytest.mark.parametrize("field, value", [("sampler_name", "bogus_sampler"), ("scheduler", "bogus_scheduler"),
                                          ("cfg", math.nan), ("denoise", math.nan)])
def test_calibrator_refuses_unknown_sampler_scheduler_and_nan(host, counted, conds, field, value):
    model, calls = counted
    with pytest.raises(ValueError, match=field.split("_")[0]):
        _calibrator(host, model, conds, **{field: value})
    assert calls == []


@pytest.mark.parametrize("field", ["eps_switch_percent", "target_speedup", "eps_main", "eps_start",
                                   "reuse_start_percent"])
def test_sencache_refuses_nan(host, wan, wan_profile, field):
    node = host.NODE_CLASS_MAPPINGS["SenCacheApply"]
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        node.execute(model=wan, profile=wan_profile, **dict(SC_INPUTS, **{field: math.nan}))


def test_apply_sencache_refuses_an_unknown_placement_before_sampling(sc, wan, wan_profile):
    st = sc.runtime.SenCacheSettings(eps_start=0.02, eps_main=0.1, max_consecutive=3, target_speedup=2.0,
                                     placement="best")
    with pytest.raises(ValueError, match="placement must be one of"):
        sc.apply.apply_sencache(wan, wan_profile, st)


def test_eps_main_zero_never_reuses(host, sc, wan, conds, wan_profile):
    """eps_main 0 means no reuse at all, also in the early phase of a CFG run that a large eps_start would cover."""
    settings = sc.runtime.SenCacheSettings(eps_start=10.0, eps_main=0.0, max_consecutive=3, eps_switch_percent=1.0)
    model, holder = sc.apply.apply_sencache(wan, wan_profile, settings)
    sampling.sample(model, *conds, sampling.wan_latent(), seed=0, steps=8)
    assert holder.last_trace.computed == 8 and holder.last_trace.reused == 0
    # the same settings with eps_main > 0 do reuse in that phase: the test would see a difference
    settings = sc.runtime.SenCacheSettings(eps_start=10.0, eps_main=1e-9, max_consecutive=3, eps_switch_percent=1.0)
    model, holder = sc.apply.apply_sencache(wan, wan_profile, settings)
    sampling.sample(model, *conds, sampling.wan_latent(), seed=0, steps=8)
    assert holder.last_trace.reused > 0


def test_save_profile_refuses_a_symlinked_subfolder(host, sc, wan_profile, profile_dir, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    link = os.path.join(profile_dir, "linked_save")
    os.symlink(outside, link)
    try:
        node = host.NODE_CLASS_MAPPINGS["SenCacheSaveProfile"]
        with pytest.raises(sc.core.ProfileError, match="symbolic link"):
            node.execute(profile=wan_profile, filename_prefix="linked_save/p")
        assert list(outside.iterdir()) == []
        # a real sub-folder saves, and Load Profile reads back what Save Profile wrote
        out = node.execute(profile=wan_profile, filename_prefix="real_sub/p")
        ui = out.ui if isinstance(out.ui, dict) else out.ui.as_dict()
        name = ui["text"][0].split("models/sencache/", 1)[1]
        loaded = host.NODE_CLASS_MAPPINGS["SenCacheLoadProfile"].execute(profile_name=name, npz_preset="auto").args[0]
        assert np.allclose(loaded.alpha_x, wan_profile.alpha_x)
    finally:
        os.unlink(link)


def test_markup_in_profile_names_is_kept_out(host, sc, wan_profile, profile_dir, caplog):
    bad = "<img src=x onerror=alert(1)>.safetensors"
    wan_profile.save(os.path.join(profile_dir, bad))
    wan_profile.save(os.path.join(profile_dir, "plain_name.safetensors"))
    try:
        with caplog.at_level(logging.WARNING, logger="SenCache"):
            options = host.NODE_CLASS_MAPPINGS["SenCacheLoadProfile"].INPUT_TYPES()["required"]["profile_name"]
        names = options[0] if isinstance(options[0], list) else options[1]["options"]
        assert "plain_name.safetensors" in names and bad not in names
        assert any("left out of Load Profile's list" in r.getMessage() for r in caplog.records)
        with pytest.raises(sc.core.ProfileError, match="may not contain"):
            host.NODE_CLASS_MAPPINGS["SenCacheSaveProfile"].execute(profile=wan_profile, filename_prefix="x<b>y")
    finally:
        os.remove(os.path.join(profile_dir, bad))
        os.remove(os.path.join(profile_dir, "plain_name.safetensors"))


def _reference_npz(path, rows_bad=()):
    t = np.linspace(999, 20, 10).round()
    jx = np.linspace(0.5, 1.5, 10)
    jt = np.linspace(2.0, 40.0, 10)
    for i in rows_bad:
        jx[i] = np.nan if i % 2 else np.inf
    np.savez(path, timesteps=t.astype(np.int64), J_x_norm=jx, J_t_norm=jt)


def test_npz_rows_with_nan_or_inf_are_dropped_with_a_warning(host, sc, profile_dir, caplog):
    path = os.path.join(profile_dir, "sensitivity_wan21_bad.npz")
    _reference_npz(path, rows_bad=(2, 5))
    try:
        with caplog.at_level(logging.WARNING, logger="SenCache"):
            prof = sc.profiles.load("sensitivity_wan21_bad.npz", "auto")
        assert prof.sigmas.size == 8
        assert any("2 of 10 rows were dropped" in r.getMessage() for r in caplog.records)
    finally:
        os.remove(path)


def test_wan_npz_with_the_cogvideox_preset_warns(host, sc, profile_dir, caplog):
    path = os.path.join(profile_dir, "sensitivity_wan21.npz")
    _reference_npz(path)
    try:
        with caplog.at_level(logging.WARNING, logger="SenCache"):
            sc.profiles.load("sensitivity_wan21.npz", "wan21")
        assert not caplog.records
        with caplog.at_level(logging.WARNING, logger="SenCache"):
            prof = sc.profiles.load("sensitivity_wan21.npz", "cogvideox15")
        msgs = [r.getMessage() for r in caplog.records]
        assert any("looks like a wan21 file but was converted with npz_preset 'cogvideox15'" in m for m in msgs), msgs
        assert prof.metadata["preset"] == "cogvideox15"      # the user's choice stands; the warning says it is wrong
    finally:
        os.remove(path)


def test_calibrator_keeps_its_profile_when_saving_fails(host, sc, wan, conds, profile_dir, caplog):
    """A save that fails after the calibration (here: the sub-folder name is taken by a file) loses nothing: the
    node still outputs the latent and the profile, and says that it did not save."""
    blocker = os.path.join(profile_dir, "blocker")
    with open(blocker, "w") as f:
        f.write("not a folder")
    try:
        with caplog.at_level(logging.WARNING, logger="SenCache"):
            out = _calibrator(host, wan, conds, save_as="blocker/p")
        latent, profile = out.args
        assert latent["samples"].shape == sampling.wan_latent().shape and profile.sigmas.size > 0
        ui = out.ui if isinstance(out.ui, dict) else out.ui.as_dict()
        assert "NOT saved" in ui["text"][0] and blocker in ui["text"][0]    # what failed and where
        said = [r.getMessage() for r in caplog.records if "could not be saved" in r.getMessage()]
        assert len(said) == 1 and blocker in said[0], said
        assert os.listdir(profile_dir) == [n for n in os.listdir(profile_dir) if not n.endswith(".tmp")]
    finally:
        os.remove(blocker)
