"""The one norm of the pack: RMS over elements (‖v‖_rms = ‖v‖_F / sqrt(numel)).

The reference code compares Frobenius-norm scores with ε·sqrt(D); dividing both sides by sqrt(D) gives
exactly this RMS form, so ε means the same at every resolution (docs/METHOD.md §2).
"""
import torch


def rms(v: torch.Tensor) -> float:
    """RMS of all elements, accumulated in float32 (safe for fp16/bf16 inputs)."""
    return float(torch.linalg.vector_norm(v.detach().float()) / (v.numel() ** 0.5)) if v.numel() else 0.0


def rms_diff_tensor(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMS of a − b as a 0-d float32 tensor on their device (no host transfer), inputs untouched."""
    d = a.detach().float() - b.detach().float()
    if not d.numel():
        return d.new_zeros(())
    return torch.linalg.vector_norm(d) / (d.numel() ** 0.5)


def rms_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS of a − b without modifying either tensor."""
    return float(rms_diff_tensor(a, b))
