"""Shared metric kernels: dictionary matching (:mod:`benchmark.metrics.matching`) and summary
statistics (:mod:`benchmark.metrics.stats`). Tasks compose these; no task re-implements them."""
