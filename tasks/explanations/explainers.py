"""Natural-language explanations of SAE latents: sources, importers and a per-latent cache.

Sources (each has an ``identity`` that names it, its version and its settings; the cache is keyed by it):

* :class:`TopContextExplainer` (default): offline and deterministic. It describes a latent by the
  tokens it fires on most strongly in the activation corpus and the tokens just before them.
* :class:`OpenAICompatibleExplainer`: any OpenAI-compatible ``/chat/completions`` endpoint (vLLM,
  Ollama, a hosted API), configured by URL, model name and an API key read from the environment;
  the prompt is a versioned template; rate limited, retried, with a cost/throughput summary.
* :class:`ImportedExplainer` over :func:`read_neuronpedia_export` (Neuronpedia's gzipped JSONL
  explanation batches) or :func:`read_delphi_explanations` (a delphi ``explanations/`` folder).

Explanations are stored per latent as soon as each is made (:class:`ExplanationCache`, append-only
JSONL), so an interrupted or failing run keeps everything already explained.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import torch

from benchmark.errors import CanonBenchError

log = logging.getLogger(__name__)


class ExplainerError(CanonBenchError):
    """An explanation source failed (endpoint error, unreadable import file)."""


# --------------------------------------------------------------------------------------------
# top-activating contexts
# --------------------------------------------------------------------------------------------
@dataclass
class Example:
    """One top-activating token: its activation, the token and its context (token marked <<so>>)."""

    activation: float
    token: str
    previous: str
    context: str


@dataclass
class LatentRecord:
    """What an explainer sees of one latent: its strongest activations on the token sample."""

    latent: int
    firing_frequency: float
    max_activation: float
    examples: list[Example] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return bool(self.examples)


class TokenText:
    """Token strings of the activation corpus with context windows.

    ``strings`` holds one string per corpus token, or a vocabulary indexed by ``token_ids``.
    ``positions`` is each token's position in its context (0 starts a new context).
    """

    def __init__(self, token_ids: Any, positions: Any, strings: Sequence[str]):
        self.token_ids = np.asarray(token_ids).reshape(-1)
        self.positions = np.asarray(positions).reshape(-1)
        n = len(self.token_ids)
        if len(strings) == n:
            self._per_token = list(strings)
            self._vocab = None
        else:
            self._per_token = None
            self._vocab = list(strings)
        sample = (self._per_token or self._vocab)[:5000]
        self.gpt_style = any(s.startswith(("Ġ", "▁", " ")) for s in sample if s)

    def __len__(self) -> int:
        return len(self.token_ids)

    def token(self, t: int) -> str:
        return self._per_token[t] if self._per_token is not None else self._vocab[int(self.token_ids[t])]

    def clean(self, s: str) -> str:
        return s.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\\n").replace("\n", "\\n").strip() or repr(s)

    def context(self, t: int, window: int) -> tuple[str, str]:
        """(context with the token marked, the previous token or '') within ``t``'s own context."""
        # a context is a run of increasing positions (rows may be missing, e.g. dropped padding)
        start = t
        while start > 0 and start > t - window and self.positions[start - 1] < self.positions[start]:
            start -= 1
        end = t + 1
        while end < len(self) and end <= t + window and self.positions[end] > self.positions[end - 1]:
            end += 1
        pieces = []
        for i in range(start, end):
            s = self.token(i)
            text = ("<<" + self.clean(s) + ">>") if i == t else s
            pieces.append((s, text))
        prev = self.clean(self.token(t - 1)) if t > start else ""
        return self._join(pieces), prev

    def _join(self, pieces: list[tuple[str, str]]) -> str:
        out = ""
        for raw, text in pieces:
            if raw.startswith("##"):
                out += text.replace("##", "", 1) if not text.startswith("<<") else text
            elif self.gpt_style:
                out += text.replace("Ġ", " ").replace("▁", " ")
            else:
                out += (" " if out else "") + text
        return out.strip()


def collect_top_contexts(
    latent_acts: torch.Tensor,
    latent_ids: Sequence[int],
    rows: np.ndarray,
    text: TokenText,
    *,
    top_k: int = 12,
    window: int = 8,
) -> list[LatentRecord]:
    """Records of the top-``top_k`` activating tokens of each latent.

    ``latent_acts [n_rows, len(latent_ids)]``: activations of the chosen latents on the token
    sample whose corpus indices are ``rows``. Ties are broken by the lower corpus index.
    """
    acts = latent_acts.detach().float().cpu()
    n = acts.shape[0]
    k = min(top_k, n)
    freq = (acts > 0).float().mean(0).numpy() if n else np.zeros(len(latent_ids))
    # stable order: sort by (-activation, row) so equal activations never depend on topk internals
    records = []
    for col, latent in enumerate(latent_ids):
        column = acts[:, col].numpy()
        order = np.lexsort((np.arange(n), -column))[:k]
        examples = []
        for r in order:
            a = float(column[r])
            if a <= 0:
                break
            t = int(rows[r])
            context, prev = text.context(t, window)
            examples.append(Example(activation=a, token=text.clean(text.token(t)), previous=prev, context=context))
        records.append(LatentRecord(latent=int(latent), firing_frequency=float(freq[col]),
                                    max_activation=float(column.max()) if n else 0.0, examples=examples))
    return records


# --------------------------------------------------------------------------------------------
# explainers
# --------------------------------------------------------------------------------------------
class Explainer(Protocol):
    identity: str

    def explain(self, record: LatentRecord) -> str | None:
        """A short explanation, or None when the latent cannot be explained (e.g. never fires)."""


class TopContextExplainer:
    """Offline, deterministic: "fires on A, B, C; after X, Y" from the top-activating tokens.

    Tokens are ranked by their summed activation over the latent's top examples (ties: first
    seen), so the description favours what the latent responds to most strongly.
    """

    version = "1"

    def __init__(self, n_tokens: int = 4, n_previous: int = 3):
        self.n_tokens = n_tokens
        self.n_previous = n_previous
        self.identity = f"top-context/v{self.version}(tokens={n_tokens},previous={n_previous})"

    def explain(self, record: LatentRecord) -> str | None:
        if not record.examples:
            return None
        tokens = _ranked([(e.token, e.activation) for e in record.examples], self.n_tokens)
        prev = _ranked([(e.previous, e.activation) for e in record.examples if e.previous], self.n_previous)
        text = "fires on " + ", ".join(tokens)
        if prev:
            text += "; after " + ", ".join(prev)
        return text


def _ranked(items: list[tuple[str, float]], n: int) -> list[str]:
    weight: dict[str, float] = {}
    for tok, a in items:
        weight[tok] = weight.get(tok, 0.0) + a
    order = sorted(weight, key=lambda t: -weight[t])  # sorted is stable: ties keep first-seen order
    return order[:n]


PROMPT_TEMPLATES: dict[str, dict[str, str]] = {
    "explain-v1": {
        "system": (
            "You explain latents of a sparse autoencoder trained on a language model's activations. "
            "Given the text examples where a latent fires most strongly, reply with one short phrase "
            "(at most 15 words) saying what the latent detects. Reply with the phrase only."
        ),
        "user": (
            "Top activating examples; the token where the latent fires is marked <<like this>>, "
            "activation in brackets:\n{examples}\n\nWhat does this latent detect?"
        ),
    }
}
DEFAULT_PROMPT = "explain-v1"


def render_prompt(record: LatentRecord, template: str = DEFAULT_PROMPT, *, max_examples: int = 10) -> list[dict[str, str]]:
    """The chat messages for one latent."""
    tpl = PROMPT_TEMPLATES[template]
    lines = [f"{i + 1}. {e.context} [{e.activation:.2f}]" for i, e in enumerate(record.examples[:max_examples])]
    return [{"role": "system", "content": tpl["system"]},
            {"role": "user", "content": tpl["user"].format(examples="\n".join(lines))}]


@dataclass
class LLMStats:
    """Throughput and cost of an LLM explainer run."""

    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    price_in: float | None = None  # USD per million prompt tokens
    price_out: float | None = None

    def summary(self) -> dict[str, Any]:
        cost = None
        if self.price_in is not None or self.price_out is not None:
            cost = (self.prompt_tokens * (self.price_in or 0) + self.completion_tokens * (self.price_out or 0)) / 1e6
        return {
            "requests": self.requests, "succeeded": self.succeeded, "failed": self.failed, "retries": self.retries,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "wall_s": round(self.wall_s, 3),
            "latents_per_s": round(self.succeeded / self.wall_s, 3) if self.wall_s > 0 else None,
            "cost_usd": cost,
        }


class OpenAICompatibleExplainer:
    """Explanations from an OpenAI-compatible chat endpoint.

    ``base_url`` is the API root (``http://127.0.0.1:8000/v1``); requests go to
    ``<base_url>/chat/completions``. ``api_key`` is given by the runner (from its environment; it is
    never stored and never part of the identity). ``requests_per_second`` spaces request starts;
    HTTP 429/5xx, timeouts and connection errors are retried ``max_retries`` times with
    exponential backoff; other HTTP errors fail at once with the status and the server's message.
    ``max_requests`` bounds the total number of HTTP requests.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        prompt: str = DEFAULT_PROMPT,
        temperature: float = 0.0,
        max_tokens: int = 60,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        requests_per_second: float | None = 2.0,
        concurrency: int = 1,
        max_requests: int | None = None,
        price_per_million_input: float | None = None,
        price_per_million_output: float | None = None,
    ):
        if not base_url or not model:
            raise ExplainerError("the LLM explainer needs a base URL and a model name", field="llm")
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ExplainerError(f"base URL {base_url!r} is not an http(s) URL", field="llm.url")
        if prompt not in PROMPT_TEMPLATES:
            raise ExplainerError(f"unknown prompt template {prompt!r} (known: {', '.join(PROMPT_TEMPLATES)})", field="llm.prompt")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.prompt = prompt
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.min_interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self.concurrency = max(1, int(concurrency))
        self.max_requests = max_requests
        self.stats = LLMStats(price_in=price_per_million_input, price_out=price_per_million_output)
        self._lock = threading.Lock()
        self._next_start = 0.0
        self.identity = (
            f"llm/{prompt}(model={model},endpoint={parsed.netloc}{parsed.path.rstrip('/')},"
            f"temperature={temperature},max_tokens={max_tokens})"
        )

    # -- one request ---------------------------------------------------------------------------
    def _wait_turn(self) -> None:
        with self._lock:
            if self.max_requests is not None and self.stats.requests >= self.max_requests:
                raise ExplainerError(f"request budget of {self.max_requests} exhausted", field="llm.max_requests")
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self.min_interval
            self.stats.requests += 1
        if start > now:
            time.sleep(start - now)

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(self.base_url + "/chat/completions", data=json.dumps(payload).encode(),
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 (URL scheme checked)
            return json.loads(resp.read().decode("utf-8"))

    def explain(self, record: LatentRecord) -> str | None:
        if not record.examples:
            return None
        payload = {"model": self.model, "messages": render_prompt(record, self.prompt),
                   "temperature": self.temperature, "max_tokens": self.max_tokens}
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.stats.retries += 1
            self._wait_turn()
            delay = self.backoff_s * (2 ** attempt)
            try:
                body = self._post(payload)
                text = body["choices"][0]["message"]["content"]
                usage = body.get("usage") or {}
                with self._lock:
                    self.stats.succeeded += 1
                    self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                    self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
                return _clean_reply(text)
            except urllib.error.HTTPError as exc:
                detail = _error_body(exc)
                last = f"HTTP {exc.code} {exc.reason}: {detail}"
                if exc.code != 429 and exc.code < 500:
                    self._count_failure()
                    raise ExplainerError(f"{self.base_url}: latent {record.latent}: {last}", field="llm") from None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.strip().isdigit():
                    delay = min(float(retry_after), 60.0)
            except (TimeoutError, socket.timeout):
                last = f"no reply within {self.timeout_s:g} s"
            except urllib.error.URLError as exc:
                last = f"cannot connect: {exc.reason}"
                if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                    last = f"no reply within {self.timeout_s:g} s"
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                last = f"malformed reply ({type(exc).__name__}: {exc})"
            if attempt < self.max_retries:
                time.sleep(delay)
        self._count_failure()
        raise ExplainerError(
            f"{self.base_url}: latent {record.latent}: giving up after {self.max_retries + 1} attempt(s): {last}",
            field="llm",
        )

    def _count_failure(self) -> None:
        with self._lock:
            self.stats.failed += 1


def _error_body(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read().decode("utf-8", "replace")
    except Exception:
        return ""
    try:
        err = json.loads(raw).get("error")
        if isinstance(err, dict):
            return str(err.get("message", err))[:300]
        if err:
            return str(err)[:300]
    except (ValueError, AttributeError):
        pass
    return raw.strip()[:300]


def _clean_reply(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    reply = lines[0] if lines else ""
    reply = reply.strip().strip('"').strip("'").strip()
    reply = re.sub(r"^(explanation|answer)\s*:\s*", "", reply, flags=re.I)
    return reply[:300]


class ImportedExplainer:
    """Explanations read from files (Neuronpedia export, delphi folder): a per-latent lookup."""

    def __init__(self, explanations: dict[int, str], identity: str):
        self.explanations = explanations
        self.identity = identity

    def explain(self, record: LatentRecord) -> str | None:
        return self.explanations.get(int(record.latent))


# --------------------------------------------------------------------------------------------
# importers
# --------------------------------------------------------------------------------------------
def _open_text(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "rt", encoding="utf-8")


def _neuronpedia_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ExplainerError("no such file or folder", file=path, field="neuronpedia")
    base = path / "explanations" if (path / "explanations").is_dir() else path
    files = [p for p in base.iterdir() if p.is_file() and re.search(r"\.(jsonl|json)(\.gz)?$", p.name)]

    def batch_no(p: Path):
        m = re.search(r"(\d+)", p.name)
        return (int(m.group(1)) if m else -1, p.name)

    files.sort(key=batch_no)
    if not files:
        raise ExplainerError("no *.jsonl.gz explanation batches found", file=base, field="neuronpedia")
    return files


def read_neuronpedia_export(
    path: Path | str, *, source: str | None = None, model_id: str | None = None,
    explanation_model: str | None = None,
) -> dict[int, str]:
    """``{latent index: description}`` from a Neuronpedia explanations export.

    Layout (``neuronpedia-datasets``: ``v1/<modelId>/<source>/explanations/batch-<n>.jsonl.gz``): one
    JSON object per line with ``modelId``, ``layer`` (the source id, e.g. ``6-res-jb``), ``index``
    (the latent, a string), ``description``, ``typeName``, ``explanationModelName`` and more.
    ``path`` is a batch file, the ``explanations`` folder or the source folder above it. Records of
    another ``source``/``model_id`` are skipped; when a latent has several explanations, the first
    one (in batch order) made by ``explanation_model`` (or by any model when None) is kept.
    """
    path = Path(path)
    out: dict[int, str] = {}
    for file in _neuronpedia_files(path):
        try:
            with _open_text(file) as fh:
                for lineno, line in enumerate(fh, 1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        data = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ExplainerError(f"line {lineno} is not JSON ({exc.msg})", file=file, field="neuronpedia") from None
                    for rec in data if isinstance(data, list) else [data]:
                        _take_neuronpedia(rec, out, file, lineno, source, model_id, explanation_model)
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise ExplainerError(f"cannot read: {exc}", file=file, field="neuronpedia") from None
    return out


def _take_neuronpedia(rec, out, file, lineno, source, model_id, explanation_model) -> None:
    if not isinstance(rec, dict):
        raise ExplainerError(f"line {lineno}: expected a JSON object", file=file, field="neuronpedia")
    if "index" not in rec or "description" not in rec:
        missing = "index" if "index" not in rec else "description"
        raise ExplainerError(f"line {lineno}: record has no {missing!r}", file=file, field=missing)
    if source is not None and rec.get("layer") not in (None, source):
        return
    if model_id is not None and rec.get("modelId") not in (None, model_id):
        return
    if explanation_model is not None and rec.get("explanationModelName") != explanation_model:
        return
    try:
        idx = int(rec["index"])
    except (TypeError, ValueError):
        raise ExplainerError(f"line {lineno}: index {rec['index']!r} is not an integer", file=file, field="index") from None
    desc = rec.get("description")
    if idx not in out and isinstance(desc, str) and desc.strip():
        out[idx] = desc.strip()


_DELPHI_NAME = re.compile(r"^(?P<module>.*?)_?(?:latent|feature)(?P<idx>\d+)\.(?:txt|json)$")


def read_delphi_explanations(folder: Path | str, *, hookpoint: str | None = None) -> dict[int, str]:
    """``{latent index: explanation}`` from a delphi run's explanations folder.

    delphi writes ``<run>/explanations/<hookpoint>_latent<index>.txt`` holding the explanation as a
    JSON string (older sae-auto-interp: ``..._feature<index>.txt``; some scripts write a JSON object
    with an ``explanation`` field). ``folder`` is the run folder or its ``explanations`` folder.
    With several hookpoints in one folder, ``hookpoint`` picks one (required then).
    """
    folder = Path(folder)
    if (folder / "explanations").is_dir():
        folder = folder / "explanations"
    if not folder.is_dir():
        raise ExplainerError("no such folder", file=folder, field="delphi")
    found: dict[str, dict[int, str]] = {}
    for p in sorted(folder.iterdir()):
        m = _DELPHI_NAME.match(p.name)
        if not m or not p.is_file():
            continue
        raw = p.read_text(encoding="utf-8", errors="replace").strip()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            data = raw  # plain text explanation
        if isinstance(data, dict):
            data = data.get("explanation")
        if not isinstance(data, str) or not data.strip():
            raise ExplainerError("expected an explanation string", file=p, field="explanation")
        found.setdefault(m.group("module"), {})[int(m.group("idx"))] = data.strip()
    if not found:
        raise ExplainerError("no <hookpoint>_latent<N>.txt explanation files", file=folder, field="delphi")
    if hookpoint is not None:
        for name in (hookpoint, hookpoint.replace("/", "--")):
            if name in found:
                return found[name]
        raise ExplainerError(f"no explanations for hookpoint {hookpoint!r} (found: {', '.join(sorted(found))})",
                             file=folder, field="hookpoint")
    if len(found) > 1:
        raise ExplainerError(f"several hookpoints ({', '.join(sorted(found))}); choose one", file=folder, field="hookpoint")
    return next(iter(found.values()))


# --------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:60].strip("-")


class ExplanationCache:
    """Per-latent explanations of one (explainer, SAE, data) triple, kept as an append-only journal in
    the runner's task cache (:class:`benchmark.cache.TaskCache`).

    Each record: ``{"latent": int, "explanation": str | null, "explainer": identity}``. A torn last
    line (crash mid-write) is ignored on reading; records of another explainer identity are ignored.
    """

    def __init__(self, cache, explainer_identity: str, subject_key: str):
        digest = hashlib.sha256(explainer_identity.encode()).hexdigest()[:10]
        self.journal = cache.journal("explanations", f"{_slug(explainer_identity)[:40]}-{digest}-{_slug(subject_key)}")
        self.path = self.journal.path
        self.identity = explainer_identity
        self._lock = threading.Lock()
        self._data: dict[int, str | None] | None = None

    def load(self) -> dict[int, str | None]:
        if self._data is None:
            data: dict[int, str | None] = {}
            for rec in self.journal.records():
                if rec.get("explainer") == self.identity and "latent" in rec:
                    data[int(rec["latent"])] = rec.get("explanation")
            self._data = data
        return self._data

    def put(self, latent: int, explanation: str | None) -> None:
        with self._lock:
            self.load()[int(latent)] = explanation
            self.journal.append({"latent": int(latent), "explanation": explanation, "explainer": self.identity})


def explain_records(
    explainer: Explainer, records: Iterable[LatentRecord], *, cache: ExplanationCache | None = None,
    quiet: bool = True, desc: str = "explain",
) -> dict[int, str | None]:
    """Explanations of every record's latent, reading and filling ``cache``.

    Each new explanation is cached the moment it exists, so when the explainer fails the error
    propagates (as :class:`ExplainerError`) with everything finished so far kept.
    """
    from tqdm.auto import tqdm

    records = list(records)
    done: dict[int, str | None] = {}
    cached = cache.load() if cache is not None else {}
    todo = []
    for r in records:
        if r.latent in cached:
            done[r.latent] = cached[r.latent]
        else:
            todo.append(r)
    if not todo:
        return done
    concurrency = int(getattr(explainer, "concurrency", 1))
    started = time.perf_counter()
    bar = tqdm(total=len(todo), disable=quiet, desc=desc, leave=False)

    def one(record: LatentRecord) -> None:
        text = explainer.explain(record)
        if cache is not None:
            cache.put(record.latent, text)
        done[record.latent] = text
        bar.update(1)

    try:
        if concurrency <= 1:
            for r in todo:
                one(r)
        else:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                futures = [pool.submit(one, r) for r in todo]
                finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for f in pending:
                    f.cancel()
                for f in finished:
                    if f.exception() is not None:
                        raise f.exception()
    except ExplainerError as exc:
        kept = len(done)
        where = f" (cache: {cache.path})" if cache is not None else ""
        raise ExplainerError(f"{exc.detail}; {kept} of {len(records)} latents explained and kept{where}",
                             file=exc.file, field=exc.field) from None
    finally:
        bar.close()
        stats = getattr(explainer, "stats", None)
        if stats is not None:
            stats.wall_s += time.perf_counter() - started
    return done

