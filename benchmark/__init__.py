"""CanonBench: feature-consistency benchmark for sparse autoencoders.

Public API (imported lazily so ``import benchmark`` stays cheap)::

    from benchmark import load_sae, SAE, mcc, match_dictionaries, pw_mcc
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from benchmark.version import BENCHMARK_VERSION as __version__

_EXPORTS = {
    "SAE": "benchmark.sae.model",
    "SAEConfig": "benchmark.sae.model",
    "load_sae": "benchmark.sae.checkpoints",
    "mcc": "benchmark.metrics.matching",
    "match_dictionaries": "benchmark.metrics.matching",
    "pw_mcc": "benchmark.metrics.matching",
    "Matching": "benchmark.metrics.matching",
    "PairwiseMCC": "benchmark.metrics.matching",
    "load_manifest": "benchmark.submission.manifest",
    "ResultStore": "benchmark.results",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")


__all__ = ["__version__", *_EXPORTS]
