"""The one norm of the pack: RMS over elements (‖v‖_rms = ‖v‖_F / sqrt(numel)).

The reference code compares Frobenius-norm scores with ε·sqrt(D); dividing both sides by sqrt(D) gives
exactly this RMS form, so ε means the same at every resolution (docs/METHOD.md §2).
"""
import torch


def rms(v: torch.Tensor) -> float:
    """RMS of all elements, accumulated in float32 (safe for fp16/bf16 inputs)."""
    return float(torch.linalg.vector_norm(v.detach().float()) / (v.numel() ** 0.5)) if v.numel() else 0.0


def rms_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS of a − b without modifying either tensor."""
    return rms(a.detach().float() - b.detach().float())
