"""The uniform SAE module every checkpoint format loads into.

Shapes: ``x [..., d_in]`` model activations, ``z [..., d_sae]`` latent activations.
Weights: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]`` (one row per latent), ``b_enc [d_sae]``,
``b_dec [d_in]``; JumpReLU/BatchTopK add ``threshold [d_sae]``; Gated adds ``b_gate``, ``b_mag``,
``r_mag`` (and ``b_enc`` holds ``b_gate`` so every SAE has one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from benchmark.errors import CheckpointError

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu", "gated")
INPUT_NORMALISATIONS = ("none", "constant_norm_rescale", "layer_norm", "scalar")


@dataclass
class SAEConfig:
    """What an SAE is, beyond its tensors.

    ``input_normalisation``: ``none``; ``constant_norm_rescale`` (each token scaled to norm sqrt(d_in),
    output scaled back); ``layer_norm`` (centre and scale each token, output un-normalised);
    ``scalar`` (multiply inputs by ``input_scale``, divide outputs by it).
    """

    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False
    input_normalisation: str = "none"
    input_scale: float = 1.0
    model_name: str | None = None
    hook_name: str | None = None
    training_architecture: str | None = None
    format: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class SAE(nn.Module):
    """A sparse autoencoder with one of the standard encode rules.

    ``encode(x)`` returns latents ``z [..., d_sae]``; ``decode(z)`` returns reconstructions in the
    (normalised) input space; ``forward(x)`` returns the reconstruction in the original space.
    """

    def __init__(
        self,
        config: SAEConfig,
        *,
        W_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_enc: torch.Tensor | None = None,
        b_dec: torch.Tensor | None = None,
        threshold: torch.Tensor | None = None,
        b_gate: torch.Tensor | None = None,
        b_mag: torch.Tensor | None = None,
        r_mag: torch.Tensor | None = None,
        source: str | None = None,
    ):
        super().__init__()
        self.config = config
        self.source = source  # file or folder the weights came from, for error messages
        arch = config.architecture
        if arch not in ARCHITECTURES:
            raise CheckpointError(
                f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})",
                file=source,
                field="architecture",
            )
        if config.input_normalisation not in INPUT_NORMALISATIONS:
            raise CheckpointError(
                f"unknown input normalisation {config.input_normalisation!r}",
                file=source,
                field="normalize_activations",
            )
        d_in, d_sae = config.d_in, config.d_sae
        if arch == "gated":
            if b_gate is None:
                b_gate = b_enc
            b_enc = b_gate
        if b_enc is None:
            b_enc = torch.zeros(d_sae, dtype=W_enc.dtype)
        if b_dec is None:
            b_dec = torch.zeros(d_in, dtype=W_dec.dtype)
        expected = {
            "W_enc": (W_enc, (d_in, d_sae)),
            "W_dec": (W_dec, (d_sae, d_in)),
            "b_enc": (b_enc, (d_sae,)),
            "b_dec": (b_dec, (d_in,)),
        }
        if arch in ("jumprelu",) or (arch == "batchtopk" and threshold is not None):
            if threshold is None:
                raise CheckpointError("jumprelu SAE needs a threshold tensor", file=source, field="threshold")
            expected["threshold"] = (threshold, (d_sae,))
        if arch == "gated":
            for name, tensor in (("b_mag", b_mag), ("r_mag", r_mag)):
                if tensor is None:
                    raise CheckpointError("gated SAE is missing this tensor", file=source, field=name)
                expected[name] = (tensor, (d_sae,))
        if arch in ("topk",) or (arch == "batchtopk" and threshold is None):
            if config.k is None or config.k < 1:
                raise CheckpointError(f"{arch} SAE needs a positive k, got {config.k!r}", file=source, field="k")
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise CheckpointError(
                    f"shape {tuple(tensor.shape)} does not match expected {shape} (d_in={d_in}, d_sae={d_sae})",
                    file=source,
                    field=name,
                )
            if not torch.is_floating_point(tensor):
                raise CheckpointError(f"dtype {tensor.dtype} is not a float type", file=source, field=name)
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise CheckpointError(f"{bad} NaN/inf values", file=source, field=name)
        self.W_enc = nn.Parameter(W_enc.detach().clone(), requires_grad=False)
        self.W_dec = nn.Parameter(W_dec.detach().clone(), requires_grad=False)
        self.b_enc = nn.Parameter(b_enc.detach().clone(), requires_grad=False)
        self.b_dec = nn.Parameter(b_dec.detach().clone(), requires_grad=False)
        for name in ("threshold", "b_mag", "r_mag"):
            tensor = expected.get(name, (None,))[0]
            if tensor is not None:
                self.register_buffer(name, tensor.detach().clone())
            else:
                setattr(self, name, None)

    # Attributes the issue names as the public surface.
    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def d_sae(self) -> int:
        return self.config.d_sae

    @property
    def architecture(self) -> str:
        return self.config.architecture

    @property
    def k(self) -> int | None:
        return self.config.k

    @property
    def model_name(self) -> str | None:
        return self.config.model_name

    @property
    def hook_name(self) -> str | None:
        return self.config.hook_name

    # --- input normalisation -------------------------------------------------------------
    def normalise_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Apply the input normalisation; returns the normalised input and what undoes it."""
        mode = self.config.input_normalisation
        if mode == "none":
            return x, ()
        if mode == "scalar":
            return x * self.config.input_scale, ()
        if mode == "constant_norm_rescale":
            scale = math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return x * scale, (scale,)
        # layer_norm: centre and scale each token, remembering how to undo it
        mu = x.mean(dim=-1, keepdim=True)
        centred = x - mu
        std = centred.std(dim=-1, keepdim=True)
        return centred / (std + 1e-5), (mu, std)

    def denormalise_output(self, x_hat: torch.Tensor, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Invert :meth:`normalise_input` on a reconstruction."""
        mode = self.config.input_normalisation
        if mode == "none":
            return x_hat
        if mode == "scalar":
            return x_hat / self.config.input_scale
        if mode == "constant_norm_rescale":
            return x_hat / state[0]
        mu, std = state
        return x_hat * std + mu

    # --- encode / decode -----------------------------------------------------------------
    def pre_activations(self, x_normalised: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``[..., d_sae]`` of an already normalised input."""
        sae_in = x_normalised.to(self.W_enc.dtype)
        if self.config.apply_b_dec_to_input:
            sae_in = sae_in - self.b_dec
        return sae_in @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``z [..., d_sae]`` for inputs ``x [..., d_in]`` in the model's units."""
        x_normalised, _ = self.normalise_input(x)
        return self._encode_normalised(x_normalised)

    def _encode_normalised(self, x_normalised: torch.Tensor) -> torch.Tensor:
        arch = self.config.architecture
        pre = self.pre_activations(x_normalised)
        if arch == "standard":
            return torch.relu(pre)
        if arch == "gated":
            sae_in = x_normalised.to(self.W_enc.dtype)
            if self.config.apply_b_dec_to_input:
                sae_in = sae_in - self.b_dec
            gate = (pre > 0).to(pre.dtype)
            magnitude = torch.relu(sae_in @ (self.W_enc * torch.exp(self.r_mag)) + self.b_mag)
            return gate * magnitude
        if arch == "jumprelu" or (arch == "batchtopk" and self.threshold is not None):
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        if self.config.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        if arch == "topk":
            return _topk_relu(pre, self.config.k)
        # batchtopk without a threshold: top (k * batch) activations over the whole batch
        flat = pre.reshape(-1, self.d_sae)
        acts = torch.relu(flat).flatten()
        keep = min(self.config.k * flat.shape[0], acts.numel())
        values, indices = acts.topk(keep)
        out = torch.zeros_like(acts).scatter_(0, indices, values)
        return out.reshape(pre.shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` (in the normalised input space) from latents ``z``."""
        z = z.to(self.W_dec.dtype)
        if self.config.rescale_acts_by_decoder_norm and self.config.architecture in ("topk", "batchtopk"):
            z = z / self.W_dec.norm(dim=-1).clamp_min(1e-12)
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x [..., d_in]`` in the model's units."""
        x_normalised, state = self.normalise_input(x)
        return self.denormalise_output(self.decode(self._encode_normalised(x_normalised)), state)

    # --- views used by the tasks ---------------------------------------------------------
    def decoder_directions(self) -> torch.Tensor:
        """Unit-norm decoder rows ``[d_sae, d_in]`` (float32); zero rows stay zero (dead)."""
        return unit_rows(self.W_dec.detach().float())

    def encoder_directions(self) -> torch.Tensor:
        """Unit-norm encoder directions ``[d_sae, d_in]`` (columns of ``W_enc``), float32."""
        return unit_rows(self.W_enc.detach().float().T)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"SAE(architecture={c.architecture!r}, d_in={c.d_in}, d_sae={c.d_sae}, k={c.k}, "
            f"model={c.model_name!r}, hook={c.hook_name!r}, format={c.format!r})"
        )


def unit_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; all-zero rows stay zero."""
    norms = rows.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, rows / norms.clamp_min(torch.finfo(rows.dtype).tiny), rows)


def _topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest pre-activations of each row (after ReLU), zero the rest."""
    k = min(k, pre.shape[-1])
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))
