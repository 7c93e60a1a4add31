"""Task ``explanation-similarity`` as a package: the task (:mod:`.task`), where explanations come
from (:mod:`.explainers`) and how they are embedded (:mod:`.embeddings`)."""

from tasks.explanations.task import ExplanationSimilarityTask

__all__ = ["ExplanationSimilarityTask"]
