"""CanonBench: feature-consistency benchmark for sparse autoencoders.

Public API (imported lazily so ``import benchmark`` stays cheap)::

    from benchmark import load_sae, SAE, mcc, match_dictionaries, pw_mcc
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from benchmark.version import BENCHMARK_VERSION as __version__

_EXPORTS = {
    "SAE": "benchmark.sae",
    "SAEConfig": "benchmark.sae",
    "load_sae": "benchmark.checkpoints",
    "mcc": "benchmark.matching",
    "match_dictionaries": "benchmark.matching",
    "pw_mcc": "benchmark.matching",
    "Matching": "benchmark.matching",
    "PairwiseMCC": "benchmark.matching",
    "load_manifest": "benchmark.manifest",
    "ResultStore": "benchmark.results",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")


__all__ = ["__version__", *_EXPORTS]
