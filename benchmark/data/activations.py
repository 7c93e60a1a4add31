"""Model activations, computed once per cache key and memory-mapped by every task and seed.

An :class:`ActivationProvider` reads one model (through transformer-lens's ``TransformerBridge``,
see :mod:`benchmark.data.models`) at transformer-lens hook names. Two kinds of cached activations:

* corpus activations ``[n_tokens, d_in]``: the offline corpus (or another) packed into windows of
  ``context_size``; special tokens (BOS/CLS/SEP) are never stored;
* prompt activations ``[n_prompts, d_in]``: given token-id prompts, read at one position each
  (e.g. the word token of the absorption task's prompts).

Every cache entry is a folder ``<cache_dir>/activations/<key>/`` holding ``acts.npy`` and
``meta.json`` (which lists the key's fields). The key is a sha256 over everything that changes the
numbers: model name, source, revision and content fingerprint (weights + tokenizer), hook, corpus
name + hash (or the prompts' hash), token count, context size, special-token handling, model dtype
and the cache format version. An entry is written to a temporary folder and renamed into place,
so readers never see a torn file; two writers racing keep the first. Several hooks requested
together share one forward pass (each still gets its own key), and the forward pass stops right
after the deepest requested hook.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark.data.corpus import DEFAULT_CORPUS, Corpus, offline_corpus, pack_tokens
from benchmark.errors import CanonBenchError, TaskError
from benchmark.data.models import ModelLocation, boot_bridge, load_tokenizer, locate_model

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
#: Forward passes run by this process (tests assert that cached runs add none).
STATS: dict[str, int] = {"forward_batches": 0, "prompt_forward_batches": 0}


@dataclass(frozen=True)
class ActivationSettings:
    """What, besides model and hook, decides the corpus activations."""

    context_size: int = 128
    n_tokens: int | None = 200_000
    model_dtype: str = "float32"
    batch_size: int = 32
    special_tokens: str = "exclude"  # BOS/CLS/SEP positions are dropped from the stored rows
    corpus: str = DEFAULT_CORPUS


class _StopForward(Exception):
    """Raised from the last capturing hook: later layers (and the LM head) are never computed."""


def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _open_npy(path: Path) -> np.ndarray:
    # copy-on-write mapping: tensors built on it are writable in memory, the file never changes
    return np.load(path, mmap_mode="c")


class ActivationProvider:
    """One model + default hook + corpus, with activations cached on disk (see module docstring).

    ``activations(hook)`` → float32 tensor ``[n_tokens, d_in]`` (memory-mapped);
    ``tokens()`` → ``(token_ids [n_tokens], positions [n_tokens], strings)``;
    ``prompt_activations(prompts, positions, hook)`` → ``[n_prompts, d_in]``;
    ``key`` → the default hook's cache key; ``model_info`` → provenance dict.
    Nothing is loaded until asked for; the model is booted only when a cache entry is missing.
    """

    def __init__(
        self,
        location: ModelLocation,
        hook: str,
        *,
        cache_dir: Path | str,
        device: str = "cpu",
        settings: ActivationSettings | None = None,
        corpus: Corpus | None = None,
        quiet: bool = False,
    ):
        self.location = location
        self.hook = hook
        self.cache_dir = Path(cache_dir)
        self.device = device
        self.settings = settings or ActivationSettings()
        self.quiet = quiet
        self._corpus = corpus
        self._bridge = None
        self._tokenizer = None

    # --- identity ------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.location.kind

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            self._corpus = offline_corpus(self.settings.corpus, cache_dir=self.cache_dir)
        return self._corpus

    def _model_fields(self) -> dict[str, Any]:
        loc = self.location
        return {
            "format": CACHE_FORMAT_VERSION, "model": loc.name, "model_source": loc.source,
            "model_revision": loc.revision, "model_fingerprint": loc.fingerprint,
        }

    def _token_fields(self) -> dict[str, Any]:
        s = self.settings
        return {
            **self._model_fields(), "what": "corpus-tokens", "corpus": self.corpus.name,
            "corpus_sha256": self.corpus.sha256, "n_tokens": s.n_tokens, "context_size": s.context_size,
            "special_tokens": s.special_tokens,
        }

    def key_fields(self, hook: str | None = None) -> dict[str, Any]:
        """Every field the corpus-activation cache key of ``hook`` is a hash of."""
        return {**self._token_fields(), "what": "corpus-activations", "hook": hook or self.hook,
                "dtype": self.settings.model_dtype}

    def key_for(self, hook: str | None = None) -> str:
        return _digest(self.key_fields(hook))

    @property
    def key(self) -> str:
        """Cache key of the default hook's corpus activations."""
        return self.key_for(self.hook)

    @property
    def model_info(self) -> dict[str, Any]:
        return {**self.location.record(), "hook": self.hook, "dtype": self.settings.model_dtype,
                "context_size": self.settings.context_size, "n_tokens": self.settings.n_tokens,
                "corpus": self.settings.corpus}

    # --- lazy model pieces -----------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.location)
        return self._tokenizer

    @property
    def bridge(self):
        if self._bridge is None:
            self._bridge = boot_bridge(self.location, device=self.device, dtype=self.settings.model_dtype)
        return self._bridge

    def _check_hooks(self, hooks: Sequence[str]) -> None:
        known = self.bridge.hook_dict
        for hook in hooks:
            if hook not in known:
                near = sorted(h for h in known if h.split(".")[-1] == hook.split(".")[-1])[:4]
                hint = f"; e.g. {', '.join(near)}" if near else ""
                raise CanonBenchError(f"model {self.location.name} has no hook {hook!r}{hint}", field="model.hook")

    # --- cache folders ---------------------------------------------------------------------
    def _entry(self, key: str) -> Path:
        return self.cache_dir / "activations" / key

    @staticmethod
    def _complete(entry: Path) -> bool:
        return (entry / "meta.json").exists()

    def _new_tmp(self) -> Path:
        root = self.cache_dir / "activations"
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))

    @staticmethod
    def _publish(tmp: Path, entry: Path, meta: dict[str, Any]) -> None:
        """Write ``meta.json`` last and rename the folder into place (the first writer wins)."""
        for npy in tmp.glob("*.npy"):
            with open(npy, "rb") as fh:
                os.fsync(fh.fileno())
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str), encoding="utf-8")
        try:
            os.rename(tmp, entry)
        except OSError:
            if not ActivationProvider._complete(entry):
                stale = entry.with_name(f".stale-{entry.name}-{uuid.uuid4().hex[:6]}")
                if entry.exists():  # a torn folder (never written by a writer here): move aside, retry
                    os.rename(entry, stale)
                os.rename(tmp, entry)
                shutil.rmtree(stale, ignore_errors=True)
                return
            shutil.rmtree(tmp, ignore_errors=True)

    # --- corpus tokens -----------------------------------------------------------------------
    def _packed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fields = self._token_fields()
        entry = self.cache_dir / "activations" / _digest(fields)
        if not self._complete(entry):
            packed = pack_tokens(self.tokenizer, self.corpus, kind=self.kind,
                                 context_size=self.settings.context_size, n_tokens=self.settings.n_tokens)
            tmp = self._new_tmp()
            np.save(tmp / "ids.npy", packed.ids)
            np.save(tmp / "keep.npy", packed.keep)
            np.save(tmp / "attention.npy", packed.attention)
            self._publish(tmp, entry, {**fields, "n_stored": packed.n_tokens})
        return (np.load(entry / "ids.npy"), np.load(entry / "keep.npy"), np.load(entry / "attention.npy"))

    def tokens(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """``(token_ids [n_tokens], positions [n_tokens], strings)``: the stored rows' token ids,
        their positions inside their context window, and the decoded token strings."""
        ids, keep, _ = self._packed()
        positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)[keep]
        token_ids = ids[keep]
        strings = self.tokenizer.convert_ids_to_tokens(token_ids.tolist())
        return torch.from_numpy(token_ids), torch.from_numpy(positions.copy()), strings

    # --- corpus activations ------------------------------------------------------------------
    def activations(self, hook: str | None = None) -> torch.Tensor:
        """Float32 activations ``[n_tokens, d_in]`` at ``hook`` (default: the provider's), memory-mapped."""
        hook = hook or self.hook
        self.ensure([hook])
        return torch.from_numpy(_open_npy(self._entry(self.key_for(hook)) / "acts.npy"))

    def ensure(self, hooks: Sequence[str]) -> None:
        """Compute and cache every missing hook of ``hooks`` in one forward pass over the corpus."""
        missing = [h for h in dict.fromkeys(hooks) if not self._complete(self._entry(self.key_for(h)))]
        if not missing:
            return
        ids, keep, attention = self._packed()
        self._check_hooks(missing)
        n_rows = int(keep.sum())
        d_model = int(self.bridge.cfg.d_model)
        tmps = {h: self._new_tmp() for h in missing}
        outs = {h: np.lib.format.open_memmap(tmps[h] / "acts.npy", mode="w+", dtype=np.float32, shape=(n_rows, d_model))
                for h in missing}
        row = 0
        batch = self.settings.batch_size
        try:
            bar = tqdm(range(0, len(ids), batch), desc=f"activations {self.location.name}", unit="batch",
                       disable=self.quiet, leave=False)
            for start in bar:
                sl = slice(start, start + batch)
                captured = run_hooks(self.bridge, torch.from_numpy(ids[sl]), torch.from_numpy(attention[sl]),
                                     missing, device=self.device)
                STATS["forward_batches"] += 1
                mask = torch.from_numpy(keep[sl])
                n = int(mask.sum())
                for h in missing:
                    outs[h][row:row + n] = captured[h][mask].float().cpu().numpy()
                row += n
            for h in missing:
                outs[h].flush()
                del outs[h]
                self._publish(tmps[h], self._entry(self.key_for(h)), {**self.key_fields(h), "shape": [n_rows, d_model]})
        finally:
            for tmp in tmps.values():
                shutil.rmtree(tmp, ignore_errors=True)

    # --- prompt activations ------------------------------------------------------------------
    def prompt_key_fields(self, prompts: Sequence[Sequence[int]], positions: Sequence[int], hook: str | None = None) -> dict[str, Any]:
        digest = hashlib.sha256()
        for ids, pos in zip(prompts, positions):
            digest.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|" + str(int(pos)).encode() + b"\n")
        return {**self._model_fields(), "what": "prompt-activations", "hook": hook or self.hook,
                "dtype": self.settings.model_dtype, "prompts_sha256": digest.hexdigest(), "n_prompts": len(prompts)}

    def prompt_activations(self, prompts: Sequence[Sequence[int]], positions: Sequence[int], hook: str | None = None,
                           *, batch_size: int = 512) -> torch.Tensor:
        """Activations ``[n_prompts, d_in]`` at ``hook``, read at ``positions[i]`` of token-id prompt
        ``prompts[i]`` (negative positions count from the prompt's end). Prompts are used exactly as
        given (no special tokens added). Cached by model, hook, dtype and a hash of the prompts."""
        hook = hook or self.hook
        if len(prompts) != len(positions):
            raise ValueError("prompts and positions differ in length")
        fields = self.prompt_key_fields(prompts, positions, hook)
        entry = self._entry(_digest(fields))
        if not self._complete(entry):
            self._check_hooks([hook])
            lengths = np.array([len(p) for p in prompts])
            pos = np.array([p if p >= 0 else len(q) + p for p, q in zip(positions, prompts)])
            if (pos < 0).any() or (pos >= lengths).any():
                raise ValueError("a prompt position lies outside its prompt")
            order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            out = np.zeros((len(prompts), int(self.bridge.cfg.d_model)), dtype=np.float32)
            bar = tqdm(range(0, len(order), batch_size), desc="prompt activations", unit="batch",
                       disable=self.quiet, leave=False)
            for start in bar:
                idx = order[start:start + batch_size]
                width = int(lengths[idx].max())
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, : lengths[i]] = torch.as_tensor(prompts[i], dtype=torch.long)
                    mask[r, : lengths[i]] = 1
                captured = run_hooks(self.bridge, ids, mask, [hook], device=self.device)[hook]
                STATS["prompt_forward_batches"] += 1
                out[idx] = captured[torch.arange(len(idx)), torch.as_tensor(pos[idx])].float().cpu().numpy()
            tmp = self._new_tmp()
            np.save(tmp / "acts.npy", out)
            self._publish(tmp, entry, fields)
        return torch.from_numpy(_open_npy(entry / "acts.npy"))


def run_hooks(bridge, ids: torch.Tensor, attention_mask: torch.Tensor, hooks: Sequence[str], *, device: str = "cpu") -> dict[str, torch.Tensor]:
    """One forward pass of ``ids [batch, seq]`` returning ``{hook: tensor [batch, seq, d]}``; the
    pass stops as soon as every requested hook has fired."""
    wanted = list(dict.fromkeys(hooks))
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def fn(tensor, hook):
            captured[name] = tensor.detach()
            if len(captured) == len(wanted):
                raise _StopForward
            return None
        return fn

    with torch.inference_mode():
        try:
            bridge.run_with_hooks(
                ids.to(device), attention_mask=attention_mask.to(device),
                fwd_hooks=[(h, capture(h)) for h in wanted], return_type=None,
            )
        except _StopForward:
            pass
    absent = [h for h in wanted if h not in captured]
    if absent:
        raise CanonBenchError(f"hook(s) {', '.join(absent)} did not fire during the forward pass", field="model.hook")
    return captured


# --- token samples (the tasks' seeded subsets of the corpus activations) ---------------------------
def sample_token_rows(n_total: int, n_sample: int, *, seed: int) -> np.ndarray:
    """Sorted distinct token indices, a uniform sample drawn with ``seed``."""
    if n_sample >= n_total:
        return np.arange(n_total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=n_sample, replace=False))


def iter_token_batches(acts: Any, rows: np.ndarray, batch_size: int, device: str) -> Iterable[torch.Tensor]:
    """Float32 batches ``[batch, d_in]`` of the selected token rows."""
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        if isinstance(acts, torch.Tensor):
            batch = acts[torch.as_tensor(idx)]
        else:
            batch = torch.as_tensor(np.asarray(acts[idx]))
        yield batch.to(device=device, dtype=torch.float32)



def settings_for_manifest(manifest, *, dtype: str = "float32", batch_size: int | None = None) -> ActivationSettings:
    """Activation settings of a submission: a recipe's ``tokens``/``context_size`` win over the defaults."""
    sub = manifest.submission
    kwargs: dict[str, Any] = {"model_dtype": dtype}
    recipe = getattr(sub, "recipe", None)
    if recipe is not None and recipe.trains_on == "model":
        if recipe.tokens is not None:
            kwargs["n_tokens"] = recipe.tokens
        if recipe.context_size is not None:
            kwargs["context_size"] = recipe.context_size
    if batch_size:
        kwargs["batch_size"] = batch_size
    return ActivationSettings(**kwargs)


def provider_for_manifest(manifest, *, cache_dir: Path | str, device: str = "cpu", quiet: bool = False,
                          dtype: str = "float32", batch_size: int | None = None) -> ActivationProvider:
    """The activation provider for a submission's ``[model]`` (model located, nothing computed yet)."""
    sub = manifest.submission
    if getattr(sub, "model", None) is None:
        raise TaskError("this submission names no model, so it has no activations", file=manifest.path, field="model")
    location = locate_model(manifest, cache_dir=cache_dir)
    return ActivationProvider(location, sub.model.hook, cache_dir=cache_dir, device=device,
                              settings=settings_for_manifest(manifest, dtype=dtype, batch_size=batch_size), quiet=quiet)


__all__ = ["ActivationProvider", "ActivationSettings", "CACHE_FORMAT_VERSION", "STATS", "iter_token_batches",
           "provider_for_manifest", "run_hooks", "sample_token_rows", "settings_for_manifest"]
