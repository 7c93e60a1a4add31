"""The trained-SAE cache when several processes (cluster workers) ask for one recipe at once."""

from __future__ import annotations

import contextlib
import threading

import torch

from benchmark.data.organisms import Organism
from benchmark.submission.manifest import Hyperparameters, RecipeSpec
from benchmark.training import cache as training_cache
from benchmark.training.cache import organism_data, train_or_load


def _recipe() -> RecipeSpec:
    return RecipeSpec(architecture="topk", width=16, seeds=[0, 1], trains_on="synthetic", presets=["song2025-toy"],
                      hyperparameters=Hyperparameters(k=3, lr=3e-3, steps=60, batch_size=64, init="unit"))


def _race(cache_dir, n: int = 2) -> list:
    """``n`` threads asking for one recipe at the same moment (each opens the lock file itself, as
    separate processes would); returns what each got, or the exception it raised."""
    data = organism_data(Organism("song2025-toy"))
    start = threading.Barrier(n)
    results: list = [None] * n

    def ask(i: int) -> None:
        start.wait()
        try:
            results[i] = train_or_load(_recipe(), data, cache_dir=cache_dir, quiet=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _same_weights(results: list) -> bool:
    first = results[0][0]
    return all(torch.equal(saes[s].W_dec, first[s].W_dec) for saes, _ in results for s in first)


def test_two_workers_racing_on_one_key_train_it_once(tmp_path):
    results = _race(tmp_path)
    assert not any(isinstance(r, BaseException) for r in results), results
    trained_now = [[r["trained_now"] for r in records] for _, records in results]
    assert sorted(trained_now) == [[False, False], [True, True]]  # one trained, the other waited and loaded
    assert _same_weights(results)


def test_without_locks_a_race_still_stores_one_whole_copy(tmp_path, monkeypatch):
    """A file system that refuses locks: both train, both save at the same moment (so both pass the
    "folder exists" check and one rename finds the other's folder), the first folder wins, nothing fails."""
    from benchmark.sae.checkpoints import native

    monkeypatch.setattr(training_cache, "_key_lock", lambda root: contextlib.nullcontext())
    together = threading.Barrier(2, timeout=30)
    real_save = native.save_native

    def save_together(*args, **kwargs):
        together.wait()
        return real_save(*args, **kwargs)

    monkeypatch.setattr(native, "save_native", save_together)
    results = _race(tmp_path)
    assert not any(isinstance(r, BaseException) for r in results), results
    assert _same_weights(results)
    (key_dir,) = [p for p in (tmp_path / "trained").iterdir() if p.is_dir()]
    assert sorted(p.name for p in key_dir.iterdir()) == ["seed-0", "seed-1"]  # no temporary folder left


def test_a_folder_saved_meanwhile_by_another_process_is_never_replaced(tmp_path, monkeypatch):
    """The other writer finishes while this one writes its files: this save raises, theirs stays."""
    import pytest

    from benchmark.errors import CheckpointError
    from benchmark.sae.checkpoints import native

    saes, _ = train_or_load(_recipe(), organism_data(Organism("song2025-toy")), cache_dir=None, quiet=True)
    target = tmp_path / "seed-0"
    real_save_file = native.save_file

    others = [saes[1]]  # "theirs": another seed's weights, so the two copies differ

    def other_writer_finishes_first(tensors, path, **kwargs):
        real_save_file(tensors, path, **kwargs)
        if others:
            native.save_native(others.pop(), target)

    monkeypatch.setattr(native, "save_file", other_writer_finishes_first)
    with pytest.raises(CheckpointError, match="another process"):
        native.save_native(saes[0], target)
    monkeypatch.undo()
    from benchmark.sae.checkpoints import load_sae

    kept = load_sae(target, format="native")
    assert torch.equal(kept.W_dec, saes[1].W_dec.cpu())
    assert [p.name for p in tmp_path.iterdir()] == ["seed-0"]  # no temporary folder left
