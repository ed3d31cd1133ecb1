"""The sensitivity measurement shared by the Sensitivity Calibrator and learn mode: wrappers that record, at every
model evaluation of a run, the model output on the sampling trajectory plus one extra evaluation of σ_prev at the new
input (sencache_core.calibration), on the positive (cond) branch only: the extra (cross-σ) pass runs on the cond rows
of the batch, not on the whole CFG batch.

Models whose diffusion model takes a list (LTX-2 `LTXAV`: [video] or [video, audio]) are measured on the first part,
the video latent: the part SenCache measures Δx on (nodes/runtime.py says why)."""
from __future__ import annotations

import logging

import torch

from ..sencache_core import TrajectoryCalibrator
from .runtime import INTERRUPT, as_parts, find_transformer_options

log = logging.getLogger("SenCache")
CAL_KEY = "sencache_calibration"


class CalibrationHolder:
    def __init__(self, channels: int):
        self.channels = channels
        self.runs: list = []
        self.current: TrajectoryCalibrator | None = None
        self.model_sampling = None
        self.full_batch_cross = False      # set when a model refused the cond-rows-only extra pass


def outer_sample_wrapper(executor, *args, **kwargs):
    holder: CalibrationHolder = executor.class_obj.model_options["transformer_options"][CAL_KEY]
    holder.current = TrajectoryCalibrator()
    holder.model_sampling = executor.class_obj.model_patcher.model.model_sampling
    try:
        return executor(*args, **kwargs)
    finally:
        holder.runs.append(holder.current.finish())
        holder.current = None


def _cross_timestep(model_sampling, t_arg, sigma: float, sigma_prev: float):
    """The model's own timestep argument for σ_prev, shaped like the one it got for σ (a tensor, or a tuple of them
    such as LTX-2's (video, audio) timesteps)."""
    if isinstance(t_arg, (list, tuple)):
        return type(t_arg)(_cross_timestep(model_sampling, t, sigma, sigma_prev) for t in t_arg)
    t_prev = model_sampling.timestep(torch.tensor([sigma_prev], dtype=torch.float32)).to(t_arg.device, t_arg.dtype)
    if bool((t_arg == t_arg.flatten()[0]).all()):
        return torch.full_like(t_arg, float(t_prev))
    t_now = float(model_sampling.timestep(torch.tensor([sigma], dtype=torch.float32)))
    return t_arg * (float(t_prev) / t_now)     # per-token timesteps (e.g. LTXV masks): linear maps only


def _select_rows(v, batch: int, rows: slice, skip):
    """v with every tensor of batch size `batch` cut to `rows` (inside lists, tuples and dicts too); `skip` (the
    transformer_options dict) and everything else unchanged."""
    if v is skip:
        return v
    if isinstance(v, torch.Tensor):
        return v[rows] if v.ndim >= 1 and v.shape[0] == batch else v
    if isinstance(v, (list, tuple)):
        return type(v)(_select_rows(e, batch, rows, skip) for e in v)
    if isinstance(v, dict):
        return {k: _select_rows(e, batch, rows, skip) for k, e in v.items()}
    return v


def measuring_diffusion_wrapper(executor, *args, **kwargs):
    to = find_transformer_options(args, kwargs)
    holder: CalibrationHolder | None = (to or {}).get(CAL_KEY)
    out = executor(*args, **kwargs)
    if holder is None or holder.current is None or to.get("sigmas") is None:
        return out
    cou = list(to.get("cond_or_uncond") or [0])
    if 0 not in cou:
        return out
    x = as_parts(args[0])[0][0]
    batch = x.shape[0]
    per = batch // len(cou)
    i = cou.index(0)
    rows = slice(i * per, (i + 1) * per)
    sigma = float(to["sigmas"].flatten()[0])
    cal = holder.current
    s_prev = cal.cross_sigma()
    f_cross = None
    if s_prev is not None and s_prev != sigma:
        f_cross = _cross_pass(holder, executor, args, kwargs, to, sigma, s_prev, batch, rows, i)
    cal.record(x[rows, :holder.channels], sigma, as_parts(out)[0][0][rows], f_cross)
    return out


def _cross_pass(holder: CalibrationHolder, executor, args, kwargs, to: dict, sigma: float, s_prev: float,
                batch: int, rows: slice, i: int):
    """The cond rows' output at σ_prev with the input of σ: the model run on those rows only (every batched
    argument cut to them). Should a model refuse the cut batch, the whole batch runs and its cond rows are kept."""
    to2 = dict(to)
    to2["sigmas"] = torch.full_like(to["sigmas"], s_prev)
    t_cross = _cross_timestep(holder.model_sampling, args[1], sigma, s_prev)
    full_args = list(args)
    full_args[1] = t_cross
    full_kwargs = dict(kwargs)
    if "transformer_options" in kwargs:
        full_kwargs["transformer_options"] = to2
    else:
        full_args[max(j for j, a in enumerate(full_args) if a is to)] = to2
    if len(to.get("cond_or_uncond") or [0]) > 1 and not holder.full_batch_cross:
        uuids = list(to.get("uuids") or [])
        to3 = dict(to2, cond_or_uncond=[0], uuids=uuids[i:i + 1] if len(uuids) > i else uuids)
        cut_args = [to3 if a is to2 else _select_rows(a, batch, rows, to2) for a in full_args]
        cut_kwargs = {k: (to3 if v is to2 else _select_rows(v, batch, rows, to2)) for k, v in full_kwargs.items()}
        try:
            return as_parts(executor(*cut_args, **cut_kwargs))[0][0]
        except (INTERRUPT, MemoryError, torch.OutOfMemoryError):
            raise                # a stop (ComfyUI's interrupt) or out of memory: the whole batch would not help
        except Exception as e:  # noqa: BLE001  an unusual model: measure as before, on the whole batch
            holder.full_batch_cross = True
            log.warning("SenCache calibration: the cond-rows-only extra pass failed (%s); running it on the whole "
                        "batch for the rest of this calibration", e)
    return as_parts(executor(*full_args, **full_kwargs))[0][0][rows]
