"""Fuzzing the checkpoint readers with hostile files (issue #14), with the loading process's memory measured.

One child process (so its peak resident memory is its own) runs three hypothesis searches, derandomized
so every run checks the same cases: safetensors headers, npz archive directories and torch zip archives
(storages, strides, dtypes, data.pkl bytes); see ``tests/fixtures/checkpoint_fuzz.py``. For every file,
``inspect_checkpoint`` and ``load_sae`` must succeed or raise one CheckpointError line naming a file,
never through the registry's last-resort net (field ``checkpoint``, which would mean a reader missed a
check); what inspect (validate) accepts, load (run) must accept too, but for damaged npz data; and the
child's peak RSS may grow by at most ``MAX_GROWTH_MB`` over its warmed-up baseline.
Its address space is capped, so a guard that stops working fails here instead of exhausting the machine.
"""

from __future__ import annotations

import json

import memory_probe

EXAMPLES = 60  # per family; about 3 s in all here, including the child's start-up
MAX_GROWTH_MB = 48  # every file is a few KB; what a reader may allocate is bounded by that
ADDRESS_SPACE_GB = 4  # the child maps about 0.7 GB after importing torch

FUZZ = f"""
from hypothesis import HealthCheck, given, settings
import checkpoint_fuzz as cf
from collections import Counter

outcomes = Counter()
SETTINGS = settings(max_examples={EXAMPLES}, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def checked(family, folder, late=()):
    try:
        outcome = cf.check(folder, late=late)
    except CanonBenchError as exc:
        raise AssertionError(f"{{family}}: not a CheckpointError: {{exc}}")
    outcomes[family + ":" + outcome] += 1


@SETTINGS
@given(case=cf.safetensors_files())
def fuzz_safetensors(case):
    checked("safetensors", cf.write_safetensors_case(cf.reset(WORK / "st"), case))


@SETTINGS
@given(raw=cf.npz_files())
def fuzz_npz(raw):
    # bytes of a member's data can change anywhere: a CRC mismatch shows only when the data is read
    checked("npz", cf.write_npz_case(cf.reset(WORK / "npz"), raw), late=("CRC", "cannot read the member"))


@SETTINGS
@given(case=cf.torch_files())
def fuzz_torch(case):
    checked("torch", cf.write_torch_case(cf.reset(WORK / "pt"), case))


fuzz_safetensors()
fuzz_npz()
fuzz_torch()
(WORK / "outcomes.json").write_text(json.dumps(outcomes))
"""


def test_hostile_checkpoint_files_fail_cleanly_within_a_memory_bound(tmp_path):
    result = memory_probe.measure(FUZZ, tmp_path, address_space_gb=ADDRESS_SPACE_GB, timeout=300)
    assert result["outcome"] == "ok", result["outcome"]
    assert result["growth_mb"] <= MAX_GROWTH_MB, result
    outcomes = json.loads((tmp_path / "outcomes.json").read_text())
    for family in ("safetensors", "npz", "torch"):
        # the search reaches both sides: files that load and files that are refused
        assert outcomes.get(f"{family}:loaded", 0) > 0 and outcomes.get(f"{family}:refused", 0) > 0, outcomes
