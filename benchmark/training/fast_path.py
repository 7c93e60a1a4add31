"""Hand-written loss and gradient of standard, topk, batchtopk and jumprelu SAEs (see below)."""

from __future__ import annotations

import logging

import torch

from benchmark.errors import CanonBenchError
from benchmark.submission.manifest import RecipeSpec

log = logging.getLogger(__name__)

#: Bumped whenever a change to this module changes what a recipe trains to (part of cache keys).
from benchmark.training.batched import BatchedSAE

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
        self.kernel = None  # a FusedKernel chosen by benchmark.training.kernel_choice, else the torch path
        self.kernel_threads = 1
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

    def use_kernel(self, kernel, threads: int = 1) -> None:
        """Compute steps with the fused C++ ``kernel`` on ``threads`` threads (None: the torch path)."""
        self.kernel, self.kernel_threads = kernel, threads

    @torch.no_grad()
    def step_grads(self, x: torch.Tensor, stats: bool) -> dict[str, torch.Tensor]:
        """Set ``.grad`` of every parameter for batch ``x [B, d_in]``; per-seed loss terms ``[S]`` when ``stats``."""
        if self.kernel is not None:
            return self._fused(x, stats)
        return self.torch_step_grads(x, stats)

    @torch.no_grad()
    def torch_step_grads(self, x: torch.Tensor, stats: bool) -> dict[str, torch.Tensor]:
        """:meth:`step_grads` on the torch path, whatever kernel is in use."""
        if self.sparse:
            return self._sparse_topk(x, stats)
        return self._dense(x, stats)

    def _fused(self, x: torch.Tensor, stats: bool) -> dict[str, torch.Tensor]:
        """One step on the fused C++ kernel (same maths as :meth:`_dense`, one pass over the batch)."""
        B, D = x.shape
        x = x.contiguous()
        g_enc, g_bias, g_dec, g_b_dec, sums = self.kernel.step(
            x, self._transposed(x), self.enc.detach(), self._effective_bias().detach().contiguous(), self.dec.detach(),
            self.b_dec.detach(), l1_over_B=self.l1 / B, grad_scale=2.0 / (B * D), threads=self.kernel_threads)
        out: dict[str, torch.Tensor] = {}
        if stats:
            sums_S3 = torch.from_numpy(sums).to(x.dtype)
            out["mse"] = sums_S3[:, 0] / (B * D)
            out["l0"] = sums_S3[:, 1] / B
            if self.l1:
                out["l1"] = sums_S3[:, 2] / B
        self.dec.grad = g_dec
        self._finish_encoder_grads(g_enc, g_bias, g_b_dec)
        return self._with_total(out)

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


