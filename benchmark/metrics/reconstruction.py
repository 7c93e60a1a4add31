"""Reconstruction statistics of an SAE on a sample of inputs (L0, explained variance, firing)."""

from __future__ import annotations

import torch

EVAL_BATCH = 4096


@torch.no_grad()
def reconstruction_stats(sae, x: torch.Tensor, device: str = "cpu", batch: int = EVAL_BATCH) -> dict[str, float]:
    """L0 (mean active latents per row), explained variance (1 − residual / total variance about the
    mean) and the fraction of latents never active, of ``sae`` on inputs ``x [n, d_in]``."""
    sae = sae.to(device)
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=device)
    l0_sum, resid, n = 0.0, 0.0, x.shape[0]
    centred_total = (x.double() - x.double().mean(0)).pow(2).sum().item()
    for i in range(0, n, batch):
        xb = x[i:i + batch].to(device)
        x_norm, state = sae.normalise_input(xb)
        z = sae._encode_normalised(x_norm)
        x_hat = sae.denormalise_output(sae.decode(z), state)
        active = z > 0
        fired |= active.any(0)
        l0_sum += active.sum().item()
        resid += (xb.double() - x_hat.double()).pow(2).sum().item()
    return {
        "l0": l0_sum / n,
        "explained_variance": 1.0 - resid / centred_total if centred_total > 0 else float("nan"),
        "never_fired_fraction": 1.0 - fired.float().mean().item(),
    }


__all__ = ["EVAL_BATCH", "reconstruction_stats"]
