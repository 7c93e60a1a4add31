"""Batched multi-seed SAE training: all seeds of a recipe train as ONE module.

Every parameter carries a leading seed dimension (``W_enc [S, d_in, d_sae]``, ``W_dec [S, d_sae,
d_in]``, ``b_enc [S, d_sae]``, ``b_dec [S, d_in]``); forward passes are batched matmuls and the loss
is the sum of the per-seed losses, so each seed's gradient (and, with the element-wise Adam update,
its whole trajectory) is exactly what training that seed alone would give. Seeds differ only in
initialisation: every seed sees the same batches in the same order.

Loss (per seed, batch ``x [B, d_in]``): ``mean over B and d_in of (x - x̂)²`` plus the recipe's
sparsity term: ``l1_coefficient · mean over B of Σ|z|`` (standard, and topk/batchtopk when given, as
in Song et al. 2025), ``l0_coefficient · mean over B of Σ H(pre - θ)`` (jumprelu, straight-through
threshold gradient with a rectangle kernel of width ``jumprelu_bandwidth``, Rajamanoharan et al.
2024), the gated L1 + auxiliary loss (gated), nested-prefix reconstruction (matryoshka), and AuxK for
dead latents when ``aux_k_coefficient`` and ``dead_after_steps`` are set (topk/batchtopk).

Initialisation (per seed, from ``torch.Generator().manual_seed(seed)`` on the CPU, so it does not
depend on the device or on which other seeds train alongside):

* ``tied``: Gaussian ``[d_in, d_sae]``, columns scaled to ``init_decoder_norm`` (default 1);
  ``W_enc`` is that matrix and ``W_dec`` its transpose (Song et al.'s "Standard" with norm 0.1).
* ``tied_small``: as ``tied`` with default norm 0.1.
* ``unit``: uniform ``[d_in, d_sae]`` (nn.Linear's default draw), columns at unit norm, tied
  (Song et al.'s / Gao et al.'s TopK initialisation).
* ``kaiming``: untied; ``W_dec`` rows uniform then unit norm, ``W_enc`` independent uniform.

Biases start at zero; a JumpReLU threshold at ``jumprelu_init_threshold`` (default 0.001).

Speed: standard, topk, batchtopk and jumprelu recipes in fp32 without AuxK train on hand-written
gradients (``_FastSAE``; equal to autograd through :meth:`BatchedSAE.losses`, checked by the tests)
with fused Adam; the rest use autograd on :class:`BatchedSAE`. TopK / BatchTopK keep every
activation at or above the k-th (k·B-th) largest value, which differs from ``torch.topk``'s
exactly-k only on exact ties. Small SAEs train on one CPU thread (see :func:`_thread_count`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmark.errors import CanonBenchError
from benchmark.manifest import RecipeSpec
from benchmark.sae import SAE, SAEConfig

log = logging.getLogger(__name__)

#: Bumped whenever a change to this module changes what a recipe trains to (part of cache keys).
TRAINER_VERSION = "2"  # 2: hand-written gradients, fused Adam, threshold-based TopK/BatchTopK masks
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


# --- analytic fast path ------------------------------------------------------------------------------
# The SAE gradient is short enough to write by hand, which skips autograd's saved tensors, zero-fills,
# expand-copies and per-op bookkeeping. With residual r = x̂ - x, g = 2r / (B·d_in) (∂mse/∂x̂) and the
# mask m = ∂z/∂pre (1 where a latent is active):
#   ∂W_dec = zᵀ g,  ∂b_dec = Σ_B g,  ∂z = g W_decᵀ + l1/B,  ∂pre = ∂z ⊙ m,
#   ∂W_enc = sae_inᵀ ∂pre,  ∂b_enc = Σ_B ∂pre,  and with sae_in = x - b_dec: ∂b_dec -= W_enc ∂b_enc.
# Parameters live as ``enc [S, F, d_in]`` (= W_encᵀ, so every encoder product of all seeds folds into
# one GEMM against the shared batch) and ``dec [S, F, d_in]`` (= W_dec).
# Small dictionaries run "latent-major" (activations [S, F, B]: long contiguous rows, and TopK's k-th
# largest value comes from an element-wise running insertion over F, ~5× faster than torch.topk on
# 32-wide rows); TopK with a wide dictionary runs sparse: only the k active latents per sample carry
# gradient, so decoding and both weight gradients are gathers / index_adds of k rows, and the one
# dense product left is the encoder's forward pass.
FAST_ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")
# When TopK trains sparse (measured, 1 thread): k ≤ width / 64 and d_in below 256 (zipf-hierarchy k = 4-16:
# 1.1-2.2× faster than dense); with d_in = 384 or k = 32 of 1,536 the dense GEMMs win.
SPARSE_TOPK_MIN_WIDTH = 128
SPARSE_TOPK_MAX_D_IN = 255
INSERTION_MAX_K = 8  # the running insertion for TopK's k-th value: k ≤ 8 and width ≤ 256
INSERTION_MAX_WIDTH = 256
CHUNK_COLUMNS = 4096  # samples per chunk of a dense step


def uses_fast_path(recipe: RecipeSpec) -> bool:
    """Whether ``recipe`` trains with the hand-written gradient (else autograd on :class:`BatchedSAE`)."""
    hp = recipe.hyperparameters
    return (
        recipe.architecture in FAST_ARCHITECTURES
        and hp.dtype != "bfloat16"
        and not (hp.aux_k_coefficient and hp.dead_after_steps)
    )


def kth_largest(pre_SFB: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value over dim 1 of ``[S, F, B]`` → ``[S, 1, B]`` (equals ``topk(k, 1).values[:, -1:]``).

    A running top-k kept element-wise while sweeping the F rows: ``O(F·k)`` vectorised ops on
    contiguous ``[S, B]`` rows, which beats ``torch.topk`` along a short non-contiguous dimension."""
    top = [pre_SFB[:, 0].clone()] + [torch.full_like(pre_SFB[:, 0], float("-inf")) for _ in range(k - 1)]
    tmp = torch.empty_like(top[0])
    for f in range(1, pre_SFB.shape[1]):
        row = pre_SFB[:, f]
        for j in range(k - 1, 0, -1):
            torch.minimum(top[j - 1], row, out=tmp)
            torch.maximum(top[j], tmp, out=top[j])
        torch.maximum(top[0], row, out=top[0])
    return top[-1].unsqueeze(1)


class _FastSAE:
    """Parameters and the hand-written loss + gradient of S SAEs (see the comment above)."""

    def __init__(self, module: BatchedSAE, recipe: RecipeSpec):
        hp = recipe.hyperparameters
        self.arch = recipe.architecture
        self.k = hp.k
        self.apply_b_dec = module.apply_b_dec_to_input
        self.l1 = float(hp.l1_coefficient or 0.0) if self.arch in ("standard", "topk", "batchtopk") else 0.0
        self.l0 = float(hp.l0_coefficient if hp.l0_coefficient is not None else 1e-3)
        self.bandwidth = module.bandwidth
        S, F = len(module.seeds), module.d_sae
        self.S, self.F, self.d_in = S, F, module.d_in
        self.sparse = (self.arch == "topk" and F > SPARSE_TOPK_MIN_WIDTH and self.k * 64 <= F
                       and module.d_in <= SPARSE_TOPK_MAX_D_IN)
        with torch.no_grad():
            self.enc = module.W_enc.detach().transpose(1, 2).contiguous()
            self.dec = module.W_dec.detach().clone()
            self.b_enc = module.b_enc.detach().clone()
            self.b_dec = module.b_dec.detach().clone()
            self.params = [self.enc, self.dec, self.b_enc, self.b_dec]
            if self.arch == "jumprelu":
                self.log_threshold = module.log_threshold.detach().clone()
                self.params.append(self.log_threshold)
            for tensor in self.params:
                tensor.requires_grad_(True)  # leaves for torch.optim; gradients are set by hand
        self.module = module
        self._x_key: tuple | None = None
        self._x_DB = torch.empty(0)
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._kth_guess: list[float | None] = [None] * S  # per seed: 0.9 × its last BatchTopK threshold

    def write_back(self) -> None:
        m = self.module
        with torch.no_grad():
            m.W_enc.copy_(self.enc.transpose(1, 2))
            m.W_dec.copy_(self.dec)
            m.b_enc.copy_(self.b_enc)
            m.b_dec.copy_(self.b_dec)
            if self.arch == "jumprelu":
                m.log_threshold.copy_(self.log_threshold)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.dec.div_(self.dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def _transposed(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, D]`` as a contiguous ``[D, B]``; reused while the same batch tensor comes back (full batch)."""
        key = (x.data_ptr(), x._version, tuple(x.shape))
        if self._x_key != key:
            self._x_key, self._x_DB = key, x.T.contiguous()
        return self._x_DB

    def _effective_bias(self) -> torch.Tensor:
        """``[S, F]``: b_enc, minus W_encᵀ b_dec when the input is centred by b_dec."""
        if not self.apply_b_dec:
            return self.b_enc
        return self.b_enc - torch.bmm(self.enc, self.b_dec.unsqueeze(-1)).squeeze(-1)

    def _finish_encoder_grads(self, g_enc: torch.Tensor, g_bias: torch.Tensor, g_b_dec: torch.Tensor) -> None:
        """Grads were taken w.r.t. ``x`` (not ``x - b_dec``) and the effective bias: map them back."""
        if self.apply_b_dec:
            g_enc.sub_(g_bias.unsqueeze(-1) * self.b_dec.unsqueeze(1))
            g_b_dec.sub_(torch.bmm(g_bias.unsqueeze(1), self.enc).squeeze(1))
        self.enc.grad, self.b_enc.grad, self.b_dec.grad = g_enc, g_bias, g_b_dec

    @torch.no_grad()
    def step_grads(self, x: torch.Tensor, stats: bool) -> dict[str, torch.Tensor]:
        """Set ``.grad`` of every parameter for batch ``x [B, d_in]``; per-seed loss terms ``[S]`` when ``stats``."""
        if self.sparse:
            return self._sparse_topk(x, stats)
        return self._dense(x, stats)

    def _buffer(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A reusable work tensor (fresh multi-MB allocations page-fault every step)."""
        key = (name, shape)
        buf = self._buffers.get(key)
        if buf is None or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def _dense(self, x: torch.Tensor, stats: bool) -> dict[str, torch.Tensor]:
        """Dense step over ``[S, F, B]`` activations, in column chunks of :data:`CHUNK_COLUMNS` samples
        (BatchTopK, whose threshold spans the whole batch, in one piece): a chunk's activations stay in
        cache while a dozen passes run over them, and the gradients are sums over samples anyway."""
        S, F, D = self.S, self.F, self.d_in
        B = x.shape[0]
        x_DB = self._transposed(x)
        bias = self._effective_bias().unsqueeze(-1)  # [S, F, 1]
        acc = {
            "dec": torch.zeros(S, F, D, dtype=x.dtype, device=x.device),
            "b_dec": torch.zeros(S, D, dtype=x.dtype, device=x.device),
            "enc": torch.zeros(S, F, D, dtype=x.dtype, device=x.device),
            "bias": torch.zeros(S, F, dtype=x.dtype, device=x.device),
        }
        if self.arch == "jumprelu":
            acc["log_threshold"] = torch.zeros(S, F, dtype=x.dtype, device=x.device)
        out: dict[str, torch.Tensor] = {}
        chunk = B if self.arch == "batchtopk" else CHUNK_COLUMNS
        for lo in range(0, B, chunk):
            self._dense_chunk(x_DB[:, lo:lo + chunk], bias, B, stats, acc, out)
        if stats:
            out["mse"] = out.pop("_sq") / (B * D)
            out["l0"] = out.pop("_active") / B
            if "_z" in out:
                out["l1"] = out.pop("_z") / B
        self.dec.grad = acc["dec"]
        if self.arch == "jumprelu":
            self.log_threshold.grad = acc["log_threshold"]
        self._finish_encoder_grads(acc["enc"], acc["bias"], acc["b_dec"])
        return self._with_total(out)

    def _dense_chunk(self, x_DC: torch.Tensor, bias: torch.Tensor, B: int, stats: bool,
                     acc: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
        """Add one chunk's (columns ``x_DC [D, C]`` of a batch of ``B``) gradients to ``acc``.

        Masks are float tensors written by torch.ge/gt(out=...): on the CPU, bool masks in where /
        masked_fill_ / mul_ run several times slower than a float multiply."""
        S, F, D = self.S, self.F, self.d_in
        C = x_DC.shape[1]
        tiny = torch.finfo(x_DC.dtype).tiny
        pre = self._buffer("pre", (S, F, C), x_DC)
        torch.matmul(self.enc, x_DC, out=pre)  # one GEMM for every seed: [S·F, D] @ [D, C]
        pre.add_(bias)
        active = self._buffer("active", (S, F, C), x_DC)
        arch = self.arch
        if arch == "standard":
            z = pre.relu_()
            torch.gt(z, 0.0, out=active)
        elif arch == "topk":
            if self.k <= INSERTION_MAX_K and F <= INSERTION_MAX_WIDTH:
                kth = kth_largest(pre, self.k)
            else:
                kth = pre.topk(self.k, dim=1).values[:, -1:]
            # the top k that are also positive (the ReLU after TopK)
            torch.ge(pre, kth.clamp_min_(tiny), out=active)
            z = pre.mul_(active)
        elif arch == "batchtopk":
            z = pre.relu_()
            n_keep = min(self.k * C, F * C)
            kth = self._batch_kth(z.reshape(S, F * C), n_keep)  # [S]
            torch.ge(z, kth.clamp_min(tiny).view(S, 1, 1), out=active)
            z.mul_(active)
            # the smallest kept activation: the k·B-th value, or the smallest positive one when fewer are positive
            batch_min = kth.clone()
            for seed_index in torch.nonzero(kth <= 0).flatten().tolist():
                positive = z[seed_index][z[seed_index] > 0]
                batch_min[seed_index] = positive.min() if positive.numel() else float("inf")
            out["_batch_min"] = batch_min
        elif arch == "jumprelu":
            threshold = self.log_threshold.exp().unsqueeze(-1)  # [S, F, 1]
            relu = pre.relu_()
            window = self._buffer("window", (S, F, C), x_DC)
            torch.lt(torch.sub(relu, threshold, out=window).abs_(), self.bandwidth / 2, out=window)
            torch.gt(relu, threshold, out=active)
            z = relu.mul_(active)
        else:  # pragma: no cover - guarded by uses_fast_path
            raise CanonBenchError(f"no fast path for {arch!r}", field="recipe.architecture")
        x_hat = torch.baddbmm(self.b_dec.unsqueeze(-1), self.dec.transpose(1, 2), z)  # [S, D, C]
        residual = x_hat.sub_(x_DC)
        if stats:
            for name, value in (("_sq", residual.pow(2).sum(dim=(1, 2))), ("_active", active.sum(dim=(1, 2))),
                                ("_z", z.sum(dim=(1, 2)) if self.l1 else None)):
                if value is not None:
                    out[name] = out[name] + value if name in out else value
        g_x_hat = residual.mul_(2.0 / (B * D))
        acc["dec"].baddbmm_(z, g_x_hat.transpose(1, 2))
        acc["b_dec"].add_(g_x_hat.sum(-1))
        g_pre = self._buffer("g_pre", (S, F, C), x_DC)
        torch.bmm(self.dec, g_x_hat, out=g_pre)  # ∂z = W_dec g (+ l1/B)
        if self.l1:
            g_pre.add_(self.l1 / B)
        if arch == "jumprelu":
            # straight-through threshold gradient (rectangle kernel): -(θ·∂z + l0/B)/ε over the window;
            # d/d log θ = θ · d/dθ
            g_theta = window.mul_(g_pre * threshold + self.l0 / B).sum(-1)
            acc["log_threshold"].add_(g_theta * threshold.squeeze(-1), alpha=-1.0 / self.bandwidth)
        g_pre.mul_(active)
        acc["enc"].view(S * F, D).addmm_(g_pre.view(S * F, C), x_DC.T)  # one GEMM: [S·F, C] @ [C, D]
        acc["bias"].add_(g_pre.sum(-1))

    def _batch_kth(self, flat_SN: torch.Tensor, n_keep: int) -> torch.Tensor:
        """The ``n_keep``-th largest value of each row of ``[S, N]`` (exact).

        A full ``topk`` over all B·F activations dominated a BatchTopK step. The threshold moves slowly,
        so each seed first keeps only the values above 0.9 × its last threshold; when at least
        ``n_keep`` survive, the top ``n_keep`` of those are the top ``n_keep`` overall (else the full row
        is searched). Per-seed state only, so seeds stay independent."""
        guesses = self._kth_guess
        kth = torch.empty(flat_SN.shape[0], dtype=flat_SN.dtype, device=flat_SN.device)
        for i, row in enumerate(flat_SN):
            values = None
            if guesses[i] is not None:
                candidates = row[row >= guesses[i]]
                if candidates.numel() >= n_keep:
                    values = candidates
            if values is None:
                values = row
            kth[i] = values.topk(n_keep, sorted=False).values.min()
        self._kth_guess = [float(v) * 0.9 if v > 0 else None for v in kth.tolist()]
        return kth

    def _with_total(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "mse" in out:
            total = out["mse"].clone()
            if "l1" in out:
                total += self.l1 * out["l1"]
            if self.arch == "jumprelu":
                total += self.l0 * out["l0"]
            out["total"] = total
        return out

    def _sparse_topk(self, x: torch.Tensor, stats: bool) -> dict[str, torch.Tensor]:
        S, F, D, k = self.S, self.F, self.d_in, self.k
        B = x.shape[0]
        enc_flat = self.enc.reshape(S * F, D)
        pre = torch.addmm(self._effective_bias().reshape(S * F), x, enc_flat.T).view(B, S, F)
        values, indices = pre.topk(k, dim=-1)  # [B, S, k]
        z = values.clamp_min_(0.0)
        rows = (indices + torch.arange(S, device=x.device).mul_(F).view(1, S, 1)).reshape(-1)  # into [S·F]
        dec_rows = self.dec.reshape(S * F, D).index_select(0, rows).view(B, S, k, D)
        x_hat = torch.matmul(z.unsqueeze(-2), dec_rows).squeeze(-2).add_(self.b_dec)  # [B, S, D]
        residual = x_hat.sub_(x.unsqueeze(1))
        out: dict[str, torch.Tensor] = {}
        if stats:
            out["mse"] = residual.pow(2).mean(dim=(0, 2))
            out["l0"] = (z > 0).sum(dim=(0, 2)).to(x.dtype) / B
            if self.l1:
                out["l1"] = z.sum(dim=(0, 2)) / B
        g_x_hat = residual.mul_(2.0 / (B * D))
        g_b_dec = g_x_hat.sum(0)
        g_dec = torch.zeros(S * F, D, dtype=x.dtype, device=x.device)
        g_dec.index_add_(0, rows, (z.unsqueeze(-1) * g_x_hat.unsqueeze(2)).view(-1, D))
        self.dec.grad = g_dec.view(S, F, D)
        g_z = torch.matmul(dec_rows, g_x_hat.unsqueeze(-1)).squeeze(-1)  # [B, S, k]
        if self.l1:
            g_z.add_(self.l1 / B)
        g_pre = g_z.mul_(z > 0)
        g_enc = torch.zeros(S * F, D, dtype=x.dtype, device=x.device)
        g_enc.index_add_(0, rows, (g_pre.unsqueeze(-1) * x.view(B, 1, 1, D)).view(-1, D))
        g_bias = torch.zeros(S * F, dtype=x.dtype, device=x.device)
        g_bias.index_add_(0, rows, g_pre.reshape(-1))
        self._finish_encoder_grads(g_enc.view(S, F, D), g_bias.view(S, F), g_b_dec)
        return self._with_total(out)


# --- training loop --------------------------------------------------------------------------------
def _lr_lambda(hp) -> Callable[[int], float]:
    steps, warmup = hp.steps, hp.warmup_steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if hp.lr_decay == "none":
            return 1.0
        progress = (step - warmup) / max(steps - warmup, 1)
        if hp.lr_decay == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _batch_source(batches: Iterable[torch.Tensor] | Callable[[int], torch.Tensor]) -> Callable[[int], torch.Tensor | None]:
    if callable(batches) and not hasattr(batches, "__iter__"):
        return batches  # type: ignore[return-value]
    iterator = iter(batches)  # type: ignore[arg-type]

    def next_batch(step: int) -> torch.Tensor | None:
        return next(iterator, None)

    return next_batch


def check_recipe(recipe: RecipeSpec, *, file: Any = None) -> None:
    """Raise a one-line error for a recipe this trainer cannot run."""
    hp = recipe.hyperparameters
    where = "recipe.hyperparameters"
    if recipe.architecture not in TRAINABLE:
        raise CanonBenchError(f"cannot train {recipe.architecture!r}", file=file, field="recipe.architecture")
    if recipe.architecture in ("topk", "batchtopk", "matryoshka") and not hp.k:
        raise CanonBenchError(f"{recipe.architecture} needs k", file=file, field=f"{where}.k")
    if hp.k and hp.k > recipe.width:
        raise CanonBenchError(f"k={hp.k} exceeds width {recipe.width}", file=file, field=f"{where}.k")
    if recipe.architecture == "matryoshka" and not hp.matryoshka_widths:
        raise CanonBenchError("matryoshka needs matryoshka_widths", file=file, field=f"{where}.matryoshka_widths")


def train_batched(
    recipe: RecipeSpec,
    batches: Iterable[torch.Tensor] | Callable[[int], torch.Tensor],
    *,
    d_in: int,
    device: str = "cpu",
    quiet: bool = False,
    seeds: list[int] | None = None,
) -> TrainingResult:
    """Train every seed of ``recipe`` (or ``seeds``) together; returns one SAE per seed.

    ``batches``: an iterable of ``[batch, d_in]`` float tensors or a callable ``step -> tensor``; the
    same batch goes to every seed. Runs ``recipe.hyperparameters.steps`` steps (fewer if an iterable
    ends first; the log says how many). Adam (β = 0.9, 0.999) at ``lr`` with the recipe's warm-up and
    decay; decoder rows renormalised after every step when ``normalise_decoder``. fp32 unless the
    recipe asks for ``bfloat16`` (autocast of the forward pass; parameters stay fp32).
    """
    check_recipe(recipe)
    hp = recipe.hyperparameters
    seeds = list(recipe.seeds if seeds is None else seeds)
    if not seeds:
        raise CanonBenchError("no seeds to train", field="seeds")
    dev = torch.device(device)
    previous_threads = torch.get_num_threads()
    try:
        return _train(recipe, batches, d_in=d_in, dev=dev, quiet=quiet, seeds=seeds)
    finally:
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)


def _thread_count(dev: torch.device, n_seeds: int, batch_rows: int, d_in: int, width: int) -> int:
    """CPU threads to train with: 1 when one dense product of a step is under :data:`SMALL_STEP_MACS`.

    A small SAE's step is dozens of element-wise ops and skinny GEMMs (inner dimension d_in) that are
    memory-bound: a second thread buys little, and on a loaded 2-core machine every op then waits for a
    descheduled sibling (measured with load average ~7 on 2 cores: small ops 3-10× slower with 2 threads
    than 1; the Song full-batch step 0.31 → 0.78 s, the zipf-hierarchy step 0.05 → 0.18 s). Steps above
    the bound (model-sized SAEs, d_in in the hundreds) keep torch's setting."""
    if dev.type != "cpu":
        return torch.get_num_threads()
    macs = n_seeds * batch_rows * d_in * width
    return 1 if macs < SMALL_STEP_MACS else torch.get_num_threads()


def _train(recipe: RecipeSpec, batches, *, d_in: int, dev: torch.device, quiet: bool, seeds: list[int]) -> TrainingResult:
    hp = recipe.hyperparameters
    model = BatchedSAE(recipe, d_in, seeds).to(dev)
    if hp.normalise_decoder:
        model.normalise_decoder()
    fast = _FastSAE(model, recipe) if uses_fast_path(recipe) else None
    params = fast.params if fast is not None else list(model.parameters())
    optimiser = _adam(params, hp.lr, dev)
    lr_factor = _lr_lambda(hp)
    next_batch = _batch_source(batches)
    track_dead = bool(hp.aux_k_coefficient and hp.dead_after_steps)
    steps_since_fired = torch.zeros(len(seeds), recipe.width, dtype=torch.long, device=dev)
    autocast = hp.dtype == "bfloat16"
    started = time.perf_counter()
    last: dict[str, torch.Tensor] = {}
    done = 0
    bar = tqdm(total=hp.steps, desc=f"train {recipe.architecture}×{len(seeds)} seeds", disable=quiet, unit="step", mininterval=1.0)
    for step in range(hp.steps):
        x = next_batch(step)
        if x is None:
            log.warning("batches ran out after %d of %d steps", step, hp.steps)
            break
        if x.dim() != 2 or x.shape[1] != d_in:
            raise CanonBenchError(f"batch {step} has shape {tuple(x.shape)}, expected [batch, {d_in}]", field="batches")
        x = x.to(dev, torch.float32, non_blocking=True)
        if step == 0:
            threads = _thread_count(dev, len(seeds), x.shape[0], d_in, recipe.width)
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)  # train_batched restores the caller's setting
        logging_step = step % LOG_EVERY == 0 or step + 1 == hp.steps
        for group in optimiser.param_groups:
            group["lr"] = hp.lr * lr_factor(step)
        if fast is not None:
            terms = fast.step_grads(x, stats=logging_step)
            optimiser.step()
            if hp.normalise_decoder:
                fast.normalise_decoder()
        else:
            dead_mask = (steps_since_fired >= hp.dead_after_steps) if track_dead else None
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                terms = model.losses(x, recipe, dead_mask, stats=logging_step)
            optimiser.zero_grad(set_to_none=True)
            terms["total"].float().sum().backward()
            optimiser.step()
            if hp.normalise_decoder:
                model.normalise_decoder()
        with torch.no_grad():
            if "_batch_min" in terms:
                _update_threshold(model, terms["_batch_min"])
            if track_dead:
                fired = (terms["_z"] > 0).any(dim=1)
                steps_since_fired = torch.where(fired, torch.zeros_like(steps_since_fired), steps_since_fired + 1)
        done = step + 1
        if logging_step:
            last = {k: v.detach() for k, v in terms.items() if not k.startswith("_")}
            if not quiet:
                bar.update(done - bar.n)  # the bar moves every LOG_EVERY steps: no per-step bookkeeping
                bar.set_postfix(mse=f"{float(last['mse'].mean()):.4g}", l0=f"{float(last['l0'].mean()):.3g}")
    bar.update(done - bar.n)
    bar.close()
    wall = time.perf_counter() - started
    if not last:
        raise CanonBenchError("no training batches were given", field="batches")
    if fast is not None:
        fast.write_back()
    saes = model.to_saes(recipe)
    train_log = {
        "steps": done,
        "seeds": seeds,
        "wall_s": wall,
        "steps_per_s": done / wall if wall > 0 else None,
        "device": str(dev),
        "dtype": hp.dtype,
        "threads": torch.get_num_threads(),
        "path": "analytic" if fast is not None else "autograd",
        "trainer_version": TRAINER_VERSION,
        "final": {name: [float(v) for v in values.float().cpu()] for name, values in last.items()},
    }
    if recipe.architecture in ("batchtopk", "matryoshka"):
        train_log["threshold"] = [float(t) for t in model.threshold_estimate.cpu()]
    log.info("trained %s × %d seeds: %d steps in %.1fs", recipe.architecture, len(seeds), done, wall)
    return TrainingResult(saes=saes, log=train_log)


def _adam(params: list[torch.Tensor], lr: float, dev: torch.device) -> torch.optim.Optimizer:
    """Adam (β = 0.9, 0.999); the fused kernel (one pass over all stacked tensors) where torch has it."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), foreach=dev.type != "cpu" or None)


def _update_threshold(model: BatchedSAE, batch_min: torch.Tensor) -> None:
    """Each batch's smallest kept activation, averaged: a plain mean over the first 100 steps, then an
    exponential moving average (decay 0.99) so the estimate follows the late, trained encoder."""
    finite = torch.isfinite(batch_min)
    n = int(model.threshold_seen) + 1
    update = torch.where(finite, batch_min, model.threshold_estimate)
    model.threshold_estimate.add_((update - model.threshold_estimate) * max(1.0 / n, 0.01))
    model.threshold_seen.fill_(n)
