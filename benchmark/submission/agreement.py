"""Does a checkpoint agree with what its manifest declares? One rule, used by ``validate --check-files``,
by ``run`` before any unit is computed, and by ``new-submission`` when it proposes an architecture.

The facts come from :func:`benchmark.sae.checkpoints.inspect_checkpoint` (configs and headers only):
width (``d_sae``), ``d_in``, ``k`` and the architecture. A checkpoint may say two things about its
architecture: how it *runs* (``architecture``: BatchTopK SAEs are saved for inference as JumpReLU
with one shared threshold, Matryoshka SAEs as their inference activation) and how it was *trained*
(``training_architecture``, when the library records it). When the training architecture is known it
decides: a Matryoshka SAE declared ``batchtopk`` would be compared, on the leaderboard, with plain
BatchTopK SAEs. Otherwise the runtime architecture must be one the declared one can be saved as.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.errors import CanonBenchError, ManifestError
from benchmark.submission.manifest import ARCHITECTURES

# What a checkpoint file may call an architecture that the manifest names: BatchTopK SAEs are saved
# for inference as JumpReLU (one shared threshold); Matryoshka SAEs as their inference activation.
COMPATIBLE_ARCHITECTURES: dict[str, set[str]] = {
    "standard": {"standard", "relu"},
    "topk": {"topk"},
    "batchtopk": {"batchtopk", "jumprelu", "topk"},
    "jumprelu": {"jumprelu"},
    "gated": {"gated"},
    "matryoshka": {"matryoshka", "topk", "batchtopk", "jumprelu", "standard", "relu"},
}

#: Training-architecture names libraries write, as the manifest's architecture names.
_TRAINED_AS = {"relu": "standard", "jump_relu": "jumprelu", "batch_topk": "batchtopk"}


def trained_as(info: Any) -> str | None:
    """The manifest architecture a checkpoint says it was trained as (``matryoshka_batchtopk`` →
    ``matryoshka``), or None when it does not say (or says something unknown)."""
    raw = getattr(info, "training_architecture", None)
    if not isinstance(raw, str) or not raw:
        return None
    name = raw.strip().lower()
    if name.startswith("matryoshka"):
        return "matryoshka"
    name = _TRAINED_AS.get(name, name)
    return name if name in ARCHITECTURES else None


def declared_architecture(info: Any) -> str | None:
    """What a manifest should declare for this checkpoint: how it was trained when it says so, else
    how it runs (None when neither is a known architecture)."""
    trained = trained_as(info)
    if trained is not None:
        return trained
    runs_as = getattr(info, "architecture", None)
    runs_as = _TRAINED_AS.get(runs_as, runs_as)
    return runs_as if runs_as in ARCHITECTURES else None


def disagreements(info: Any, manifest, *, entry: str, where: str, width: int | None = None) -> list[CanonBenchError]:
    """Every way the checkpoint ``info`` (of manifest entry ``entry``, found at ``where``) disagrees
    with the manifest's ``[sae]`` table; one error per field, naming the manifest file and the field.
    ``width``: the width a ladder entry declares (default ``sae.width``; a mismatch then names
    ``<entry>.width``)."""
    sae = manifest.submission.sae
    path = Path(manifest.path)
    problems: list[CanonBenchError] = []
    d_sae = getattr(info, "d_sae", None)
    d_in = getattr(info, "d_in", None)
    k = getattr(info, "k", None)
    declared = sae.width if width is None else width
    if d_sae is not None and d_sae != declared:
        blamed = "sae.width" if declared == sae.width else f"{entry}.width"
        problems.append(ManifestError(f"{entry} ({where}) has d_sae={d_sae} but the manifest says {declared}",
                                      file=path, field=blamed))
    if d_in is not None and sae.d_in is not None and d_in != sae.d_in:
        problems.append(ManifestError(f"{entry} ({where}) has d_in={d_in} but the manifest says {sae.d_in}",
                                      file=path, field="sae.d_in"))
    problem = _architecture_problem(info, sae.architecture)
    if problem is not None:
        problems.append(ManifestError(f"{entry} ({where}) {problem}", file=path, field="sae.architecture"))
    if k is not None and sae.k is not None and k != sae.k:
        problems.append(ManifestError(f"{entry} ({where}) has k={k} but the manifest says {sae.k}",
                                      file=path, field="sae.k"))
    return problems


def _architecture_problem(info: Any, declared: str) -> str | None:
    trained = trained_as(info)
    runs_as = getattr(info, "architecture", None)
    if trained is not None:
        if trained == declared:
            return None
        shown = trained + (f", saved as {runs_as}" if runs_as and runs_as != trained else "")
        return f"was trained as a {shown} SAE but the manifest says {declared}; declare architecture = \"{trained}\""
    if runs_as and runs_as not in COMPATIBLE_ARCHITECTURES.get(declared, {declared}):
        return f"is a {runs_as} SAE but the manifest says {declared}"
    return None


__all__ = ["COMPATIBLE_ARCHITECTURES", "declared_architecture", "disagreements", "trained_as"]
