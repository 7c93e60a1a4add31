"""The batched SAE module: S seeds of one recipe as one module with a leading seed dimension,
its initialisations and its autograd losses (the reference the fast path is checked against)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from benchmark.errors import CanonBenchError
from benchmark.submission.manifest import RecipeSpec
from benchmark.sae.model import SAE, SAEConfig

log = logging.getLogger(__name__)

#: Bumped whenever a change to this module changes what a recipe trains to (part of cache keys).
TRAINER_VERSION = "3"  # 2: hand-written gradients, fused Adam, threshold-based TopK/BatchTopK masks;
#                         3: standard/topk may train on the fused C++ kernel (log["kernel"] says which)
TRAINABLE = ("standard", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")
LOG_EVERY = 50
#: One step's dense product (seeds × batch × d_in × width multiply-adds) below this trains on 1 thread.
SMALL_STEP_MACS = 2**28


@dataclass
class TrainingResult:
    """``saes``: one trained :class:`SAE` per seed; ``log``: final per-seed losses, L0, wall time."""

    saes: dict[int, SAE]
    log: dict[str, Any] = field(default_factory=dict)


# --- straight-through pieces for JumpReLU ------------------------------------------------------
class _JumpReLU(torch.autograd.Function):
    """``pre · H(pre - θ)``; ∂/∂θ through a rectangle kernel of width ``bandwidth``."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_out * (pre > threshold).to(pre.dtype)
        window = ((pre - threshold).abs() < eps / 2).to(pre.dtype)
        grad_threshold = -(threshold / eps) * window * grad_out
        return grad_pre, _sum_to(grad_threshold, threshold.shape), None


class _Step(torch.autograd.Function):
    """``H(pre - θ)``; ∂/∂θ through a rectangle kernel (no gradient to ``pre``)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        window = ((pre - threshold).abs() < eps / 2).to(pre.dtype)
        grad_threshold = -(1.0 / eps) * window * grad_out
        return None, _sum_to(grad_threshold, threshold.shape), None


def _sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    while grad.dim() > len(shape):
        grad = grad.sum(0)
    for dim, size in enumerate(shape):
        if size == 1 and grad.shape[dim] != 1:
            grad = grad.sum(dim, keepdim=True)
    return grad


# --- the batched module ------------------------------------------------------------------------
def _init_weights(init: str, seed: int, d_in: int, d_sae: int, norm: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_enc [d_in, d_sae], W_dec [d_sae, d_in])`` for one seed, fp32 on the CPU."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    if init in ("tied", "tied_small"):
        w = torch.randn(d_in, d_sae, generator=gen)
        scale = norm if norm is not None else (1.0 if init == "tied" else 0.1)
        w = w / w.norm(dim=0, keepdim=True) * scale
        return w.clone(), w.T.clone()
    bound_dec = 1.0 / math.sqrt(d_sae)
    w = torch.empty(d_in, d_sae).uniform_(-bound_dec, bound_dec, generator=gen)
    w = w / w.norm(dim=0, keepdim=True) * (norm if norm is not None else 1.0)
    if init == "unit":
        return w.clone(), w.T.clone()
    if init == "kaiming":
        bound_enc = 1.0 / math.sqrt(d_in)
        w_enc = torch.empty(d_in, d_sae).uniform_(-bound_enc, bound_enc, generator=gen)
        return w_enc, w.T.clone()
    raise CanonBenchError(f"unknown init {init!r}", field="recipe.hyperparameters.init")


class BatchedSAE(nn.Module):
    """S SAEs of one architecture as stacked parameters (leading seed dimension)."""

    def __init__(self, recipe: RecipeSpec, d_in: int, seeds: list[int]):
        super().__init__()
        hp = recipe.hyperparameters
        self.architecture = recipe.architecture
        self.seeds = list(seeds)
        self.d_in, self.d_sae = d_in, recipe.width
        self.k = hp.k
        self.apply_b_dec_to_input = hp.apply_b_dec_to_input or hp.tie_pre_post_bias
        self.bandwidth = hp.jumprelu_bandwidth or 0.001
        self.matryoshka_widths = sorted(set(hp.matryoshka_widths or [])) or None
        pairs = [_init_weights(hp.init, s, d_in, self.d_sae, hp.init_decoder_norm) for s in seeds]
        S = len(seeds)
        self.W_enc = nn.Parameter(torch.stack([p[0] for p in pairs]))
        self.W_dec = nn.Parameter(torch.stack([p[1] for p in pairs]))
        self.b_enc = nn.Parameter(torch.zeros(S, self.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(S, d_in))
        if self.architecture == "jumprelu":
            init_threshold = hp.jumprelu_init_threshold if hp.jumprelu_init_threshold is not None else 0.001
            self.log_threshold = nn.Parameter(torch.full((S, self.d_sae), math.log(max(init_threshold, 1e-12))))
        if self.architecture == "gated":
            self.r_mag = nn.Parameter(torch.zeros(S, self.d_sae))
            self.b_mag = nn.Parameter(torch.zeros(S, self.d_sae))
        # BatchTopK / Matryoshka export a JumpReLU-style threshold estimated during training.
        self.register_buffer("threshold_estimate", torch.zeros(S))
        self.register_buffer("threshold_seen", torch.zeros((), dtype=torch.long))

    def sae_input(self, x: torch.Tensor) -> torch.Tensor:
        """``[S, B, d_in]`` (or ``[1, B, d_in]`` when no bias is subtracted)."""
        if self.apply_b_dec_to_input:
            return x.unsqueeze(0) - self.b_dec.unsqueeze(1)
        return x.unsqueeze(0)

    def pre_activations(self, sae_in: torch.Tensor) -> torch.Tensor:
        """``[S, B, d_sae]``."""
        return torch.baddbmm(self.b_enc.unsqueeze(1), sae_in.expand(len(self.seeds), -1, -1), self.W_enc)

    def encode_train(self, pre: torch.Tensor, sae_in: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Latents ``z [S, B, d_sae]`` and extra tensors the loss needs."""
        arch = self.architecture
        extra: dict[str, torch.Tensor] = {}
        if arch == "standard":
            return torch.relu(pre), extra
        if arch == "topk":
            values, indices = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values)), extra
        if arch in ("batchtopk", "matryoshka"):
            S, B, F = pre.shape
            flat = torch.relu(pre).reshape(S, B * F)
            values, indices = flat.topk(min(self.k * B, B * F), dim=-1)
            z = torch.zeros_like(flat).scatter(-1, indices, values).reshape(S, B, F)
            with torch.no_grad():
                positive = torch.where(values > 0, values, torch.full_like(values, float("inf")))
                extra["batch_min"] = positive.min(dim=-1).values
            return z, extra
        if arch == "jumprelu":
            threshold = self.log_threshold.exp().unsqueeze(1)
            pre_relu = torch.relu(pre)
            extra["l0"] = _Step.apply(pre_relu, threshold, self.bandwidth)
            return _JumpReLU.apply(pre_relu, threshold, self.bandwidth), extra
        if arch == "gated":
            magnitude = torch.baddbmm(
                self.b_mag.unsqueeze(1), sae_in.expand(len(self.seeds), -1, -1), self.W_enc * self.r_mag.exp().unsqueeze(1)
            )
            gate = (pre > 0).to(pre.dtype)
            extra["gate_relu"] = torch.relu(pre)
            return gate * torch.relu(magnitude), extra
        raise CanonBenchError(f"cannot train architecture {arch!r}", field="recipe.architecture")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.b_dec.unsqueeze(1), z, self.W_dec)

    def losses(
        self, x: torch.Tensor, recipe: RecipeSpec, dead_mask: torch.Tensor | None, *, stats: bool = True
    ) -> dict[str, torch.Tensor]:
        """Per-seed loss terms ``[S]`` for one batch ``x [B, d_in]``; ``total`` is what is minimised.
        ``stats=False`` skips the L0 bookkeeping (one pass less over the latents)."""
        hp = recipe.hyperparameters
        sae_in = self.sae_input(x)
        pre = self.pre_activations(sae_in)
        z, extra = self.encode_train(pre, sae_in)
        x_hat = self.decode(z)
        target = x.unsqueeze(0)
        mse = (x_hat - target).pow(2).mean(dim=(1, 2))
        out = {"mse": mse}
        if stats:
            out["l0"] = (z > 0).sum(-1).to(x.dtype).mean(-1)
        total = mse.clone()
        arch = self.architecture
        if self.matryoshka_widths and arch == "matryoshka":
            for width in self.matryoshka_widths:
                if width >= self.d_sae:
                    continue
                partial = torch.baddbmm(self.b_dec.unsqueeze(1), z[..., :width], self.W_dec[:, :width])
                total = total + (partial - target).pow(2).mean(dim=(1, 2))
        if hp.l1_coefficient and arch in ("standard", "topk", "batchtopk", "matryoshka"):
            l1 = z.sum(-1).mean(-1)  # z ≥ 0 for these encoders, so Σz is the L1 norm (and cheaper)
            out["l1"] = l1
            total = total + hp.l1_coefficient * l1
        if arch == "jumprelu":
            l0_term = extra["l0"].sum(-1).mean(-1)
            total = total + (hp.l0_coefficient if hp.l0_coefficient is not None else 1e-3) * l0_term
        if arch == "gated":
            gate_relu = extra["gate_relu"]
            l1 = (gate_relu * self.W_dec.norm(dim=-1).unsqueeze(1)).sum(-1).mean(-1)
            via_gate = torch.baddbmm(self.b_dec.detach().unsqueeze(1), gate_relu, self.W_dec.detach())
            aux = (via_gate - target).pow(2).mean(dim=(1, 2))
            out["l1"] = l1
            total = total + (hp.l1_coefficient if hp.l1_coefficient is not None else 1e-3) * l1 + aux
        if hp.aux_k_coefficient and dead_mask is not None and arch in ("topk", "batchtopk", "matryoshka") and bool(dead_mask.any()):
            k_aux = min(max(self.d_in // 2, 1), self.d_sae)
            masked = pre.masked_fill(~dead_mask.unsqueeze(1), float("-inf"))
            values, indices = masked.topk(k_aux, dim=-1)
            values = torch.where(torch.isfinite(values), torch.relu(values), torch.zeros_like(values))
            z_aux = torch.zeros_like(pre).scatter(-1, indices, values)
            residual = (target - x_hat).detach()
            residual_hat = torch.bmm(z_aux, self.W_dec)
            aux = (residual_hat - residual).pow(2).mean(dim=(1, 2)) / residual.pow(2).mean(dim=(1, 2)).clamp_min(1e-12)
            has_dead = dead_mask.any(-1).to(aux.dtype)
            out["aux_k"] = aux * has_dead
            total = total + hp.aux_k_coefficient * aux * has_dead
        out["total"] = total
        out["_z"] = z.detach()
        if "batch_min" in extra:
            out["_batch_min"] = extra["batch_min"]
        return out

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def to_saes(self, recipe: RecipeSpec, metadata: dict[str, Any] | None = None) -> dict[int, SAE]:
        """One plain :class:`SAE` (fp32, CPU) per seed."""
        out = {}
        arch = self.architecture
        for i, seed in enumerate(self.seeds):
            tensors: dict[str, torch.Tensor] = {
                "W_enc": self.W_enc[i].detach().float().cpu(),
                "W_dec": self.W_dec[i].detach().float().cpu(),
                "b_enc": self.b_enc[i].detach().float().cpu(),
                "b_dec": self.b_dec[i].detach().float().cpu(),
            }
            sae_arch, k = arch, self.k
            if arch == "jumprelu":
                tensors["threshold"] = self.log_threshold[i].exp().float().cpu()
            elif arch in ("batchtopk", "matryoshka"):
                sae_arch = "batchtopk"
                tensors["threshold"] = torch.full((self.d_sae,), float(self.threshold_estimate[i]))
            elif arch == "gated":
                tensors["b_mag"] = self.b_mag[i].detach().float().cpu()
                tensors["r_mag"] = self.r_mag[i].detach().float().cpu()
            config = SAEConfig(
                architecture=sae_arch,
                d_in=self.d_in,
                d_sae=self.d_sae,
                k=k,
                apply_b_dec_to_input=self.apply_b_dec_to_input,
                training_architecture=arch,
                format="native",
                metadata={**(metadata or {}), "seed": seed, "trainer_version": TRAINER_VERSION},
            )
            out[seed] = SAE(config, **tensors, source=f"trained:{arch}:seed={seed}")
        return out


