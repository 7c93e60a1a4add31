"""Activations a researcher computed, read from a file instead of running the model.

A checkpoints manifest may declare them in an ``[activations]`` table (see
:class:`benchmark.submission.manifest.ActivationsSpec`): a ``.npy`` array or a ``.safetensors`` file
holding one float tensor ``activations``, shape ``[n_tokens, d_in]``, of the declared model at the
declared hook, over a corpus whose sha256 is declared. :class:`FileActivations` serves them through
the interface tasks use from :class:`benchmark.data.activations.ActivationProvider`
(``activations()``, ``key``, ``hook``, ``model_info``, ``ensure()``); it has no model, so
``tokens()`` and ``prompt_activations()`` (which need the tokenizer or a forward pass) raise a
one-line error naming the manifest field.

Nothing in the file is executed: ``.npy`` is read with ``allow_pickle=False``, ``.safetensors``
through the bounded header reader of the checkpoint loaders. Float32 and float16 data are
memory-mapped (read on demand, never copied whole); bfloat16 is read into memory. The file's size
and sha256 are part of the submission's inputs fingerprint (:mod:`benchmark.submission.identity`)
and of :attr:`FileActivations.key`, so another file is another unit and another data hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from benchmark.errors import CanonBenchError, TaskError

#: The tensor a ``.safetensors`` activations file must hold.
TENSOR_NAME = "activations"
_MEMMAP_DTYPES = {"F32": np.float32, "F16": np.float16}


class FileActivations:
    """Corpus activations ``[n_tokens, d_in]`` from a file (see the module docstring).

    ``path``: the file (already checked against the submission's containment rule); ``sha256`` and
    ``size``: its digest and size (from the inputs fingerprint); ``model``/``hook``/``corpus_sha256``:
    what the manifest declares; ``manifest_path``: named in errors.
    """

    def __init__(self, path: Path | str, *, sha256: str, size: int, model: str, hook: str, corpus_sha256: str,
                 corpus: str | None = None, manifest_path: Path | str | None = None):
        self.path = Path(path)
        self.sha256 = sha256
        self.size = int(size)
        self.model = model
        self.hook = hook
        self.corpus_sha256 = corpus_sha256
        self.corpus_name = corpus
        self.manifest_path = manifest_path
        self._acts: torch.Tensor | None = None

    # --- identity ---------------------------------------------------------------------------------
    def key_fields(self, hook: str | None = None) -> dict[str, Any]:
        return {"what": "file-activations", "sha256": self.sha256, "bytes": self.size, "model": self.model,
                "hook": hook or self.hook, "corpus_sha256": self.corpus_sha256}

    @property
    def key(self) -> str:
        """Cache key and data hash of these activations: the file's sha256 with what it declares."""
        return hashlib.sha256(json.dumps(self.key_fields(), sort_keys=True).encode()).hexdigest()[:32]

    @property
    def model_info(self) -> dict[str, Any]:
        acts = self.activations()
        return {"source": "file", "file": self.path.name, "sha256": self.sha256, "name": self.model, "hook": self.hook,
                "corpus_sha256": self.corpus_sha256, "corpus": self.corpus_name, "n_tokens": int(acts.shape[0]),
                "d_in": int(acts.shape[1])}

    # --- the provider interface ---------------------------------------------------------------------
    def ensure(self, hooks: Sequence[str]) -> None:
        """Nothing to compute; only the declared hook exists."""
        for hook in hooks:
            self._check_hook(hook)

    def activations(self, hook: str | None = None) -> torch.Tensor:
        """Activations ``[n_tokens, d_in]`` as a float tensor (float32/float16 memory-mapped)."""
        self._check_hook(hook or self.hook)
        if self._acts is None:
            self._acts = self._read()
        return self._acts

    def tokens(self):
        raise TaskError("activations from a file come without tokens, which this task needs; remove the "
                        "[activations] table to compute them from the model", file=self.manifest_path, field="activations")

    def prompt_activations(self, *args, **kwargs):
        raise TaskError("activations from a file cannot be computed for new prompts; this task needs the model",
                        file=self.manifest_path, field="activations")

    # --- reading ------------------------------------------------------------------------------------
    def _check_hook(self, hook: str) -> None:
        if hook != self.hook:
            raise TaskError(f"the activations file holds hook {self.hook!r}, not {hook!r}", file=self.manifest_path,
                            field="activations.hook")

    def _fail(self, message: str) -> CanonBenchError:
        return CanonBenchError(f"{self.path.name}: {message}", file=self.manifest_path, field="activations.file")

    def _read(self) -> torch.Tensor:
        if self.path.suffix == ".npy":
            array = self._read_npy()
        else:
            array = self._read_safetensors()
        if isinstance(array, torch.Tensor):
            tensor = array
        else:
            tensor = torch.from_numpy(array)
        if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
            raise self._fail(f"expected a [n_tokens, d_in] array, got shape {tuple(tensor.shape)}")
        if not tensor.dtype.is_floating_point:
            raise self._fail(f"expected floating-point activations, got {tensor.dtype}")
        return tensor

    def _read_npy(self):
        try:  # a copy-on-write mapping: tensors built on it are writable in memory, the file never changes
            array = np.load(self.path, mmap_mode="c", allow_pickle=False)
        except ValueError as exc:  # pickled object arrays land here: refused, never unpickled
            raise self._fail(f"not a plain numeric .npy array ({exc})") from None
        except OSError as exc:
            raise self._fail(f"cannot read ({exc.strerror or exc})") from None
        if array.dtype.kind != "f" or array.dtype.itemsize not in (2, 4, 8):
            raise self._fail(f"expected float16/32/64 activations, got {array.dtype}")
        if not array.dtype.isnative:  # big-endian data: converted in memory
            array = array.astype(array.dtype.newbyteorder("="))
        return array

    def _read_safetensors(self):
        from benchmark.sae.checkpoints.safetensors_header import load_safetensors, read_safetensors_header

        try:
            header = read_safetensors_header(self.path)
        except CanonBenchError as exc:
            raise self._fail(exc.detail) from None
        entry = header.tensors.get(TENSOR_NAME)
        if entry is None:
            raise self._fail(f"holds no tensor named {TENSOR_NAME!r} (found: {', '.join(sorted(header.tensors)) or 'none'})")
        if len(entry.shape) != 2:
            raise self._fail(f"tensor {TENSOR_NAME!r} has shape {entry.shape}, expected [n_tokens, d_in]")
        if entry.dtype in _MEMMAP_DTYPES:
            offset = 8 + header.header_bytes + entry.begin
            return np.memmap(self.path, dtype=_MEMMAP_DTYPES[entry.dtype], mode="c", offset=offset, shape=entry.shape)
        if entry.dtype not in ("BF16", "F64"):
            raise self._fail(f"tensor {TENSOR_NAME!r} has dtype {entry.dtype}; expected a float type")
        try:
            tensors, _ = load_safetensors(self.path, [TENSOR_NAME])
        except CanonBenchError as exc:
            raise self._fail(exc.detail) from None
        return tensors[TENSOR_NAME]


def file_activations_for_manifest(manifest, *, cache_dir: Path | str | None = None) -> FileActivations:
    """The :class:`FileActivations` a manifest's ``[activations]`` table declares (file located with
    the submission's containment rule, hashed with the sources' memo)."""
    from benchmark.submission.identity import activations_identity

    spec = manifest.submission.activations
    path = manifest.resolve_local(spec.file, field="activations.file", outside=spec.local_outside)
    record = activations_identity(manifest, cache_dir=cache_dir)
    return FileActivations(path, sha256=record["sha256"], size=record["bytes"], model=spec.model, hook=spec.hook,
                           corpus_sha256=spec.corpus_sha256, corpus=spec.corpus, manifest_path=manifest.path)


__all__ = ["FileActivations", "TENSOR_NAME", "file_activations_for_manifest"]
