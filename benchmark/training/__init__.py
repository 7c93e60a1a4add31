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
Standard and TopK recipes with ``d_in`` a multiple of 16 may train on a fused C++ kernel built at run
time (:mod:`~benchmark.training.fused_kernel`: one pass over the batch, everything in L1; TopK's
backward touches only the k active latents); :mod:`~benchmark.training.kernel_choice` picks it, its
thread count, or the torch path from a timed self-check on the real shapes, cached per process and
recorded as ``log["kernel"]`` with the CPU's flags and a tiny fp32/bf16 matmul probe
(:mod:`~benchmark.training.cpu_features`). The kernels agree to float32 rounding, not bit for bit.
"""


from benchmark.training.batched import TRAINABLE, TRAINER_VERSION, BatchedSAE, TrainingResult
from benchmark.training.fast_path import uses_fast_path
from benchmark.training.loop import check_recipe, train_batched

__all__ = ["TRAINABLE", "TRAINER_VERSION", "BatchedSAE", "TrainingResult", "check_recipe", "train_batched", "uses_fast_path"]
