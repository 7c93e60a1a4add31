"""Stage 2, the SAEs themselves: the uniform :class:`~benchmark.sae.model.SAE` module and the
on-disk checkpoint formats that load into it (:mod:`benchmark.sae.checkpoints`)."""
