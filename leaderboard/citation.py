"""\u201cCite this score\u201d: a BibTeX entry per (submission, task) built from the stored row only.

The entry names everything needed to find the exact computation again: the benchmark version, the
task and its version, the run id, the code commit, the run spec hash and the inputs hash, and the
checkpoint commits (Hub) or file hashes (local). A local submission is marked as not reproducible
from the Hub; the task's stored chance level is given when it names one. Text reaches BibTeX through
:func:`bibtex_text` (LaTeX specials escaped), and the page through jinja's autoescaping.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pandas as pd

from leaderboard.cells import spread_text
from leaderboard.chance import ChanceLevel
from leaderboard.plots import format_number

_LATEX = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#", "%": r"\%",
          "_": r"\_", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\u00b1": r"$\pm$"}
LOCAL_NOTE = ("Local submission: the checkpoints were read from local folders or trained by the benchmark, not "
              "from pinned Hub commits, so this score cannot be reproduced from the Hub.")


def bibtex_text(text: Any) -> str:
    """``text`` safe inside a braced BibTeX field: LaTeX specials escaped, control characters and
    line breaks turned into spaces."""
    flat = " ".join(str(text).split())
    return "".join(_LATEX.get(ch, ch if ch.isprintable() else " ") for ch in flat)


def cite_key(submission: str, task: str, version: str, run_id: str) -> str:
    """A BibTeX key from the names (letters, digits, ``-`` and ``:`` only)."""
    raw = f"canonbench:{submission}:{task}:v{version}:{run_id}"
    return re.sub(r"[^A-Za-z0-9:-]+", "-", raw)


def checkpoint_lines(row: Any) -> list[str]:
    """What the score was computed from, one phrase per checkpoint: ``repo@commit/path`` for the Hub,
    the weight files' sha256 for local folders, the training key for SAEs trained here."""
    try:
        records = json.loads(row.checkpoints) if isinstance(row.checkpoints, str) else []
    except ValueError:
        records = []
    out = []
    for record in records if isinstance(records, list) else []:
        if not isinstance(record, dict):
            continue
        seed = record.get("seed")
        prefix = f"seed {seed}: " if seed is not None else ""
        if record.get("repo") and (record.get("resolved_revision") or record.get("revision")):
            commit = record.get("resolved_revision") or record.get("revision")
            path = f"/{record['path']}" if record.get("path") else ""
            out.append(f"{prefix}{record['repo']}@{commit}{path}")
            continue
        if record.get("source") == "trained":
            out.append(f"{prefix}trained here (training key {record.get('training_key')})")
            continue
        files = record.get("files") or {}
        hashes = [f"{name} sha256 {detail.get('sha256')}" for name, detail in sorted(files.items())
                  if isinstance(detail, dict) and detail.get("sha256") and not name.endswith(".json")]
        out.append(f"{prefix}local files " + ("; ".join(hashes) if hashes else f"at {record.get('path') or record.get('source')}"))
    return out


def score_bibtex(*, submission: str, title: str, authors: list[str], local: bool, task: str, task_title: str,
                 row: Any, chance: ChanceLevel | None) -> str:
    """The BibTeX entry of one stored main-metric row (see the module docstring)."""
    spread = spread_text(row)
    value = f"{format_number(float(row.value))}{' ' + spread if spread else ''}"
    year = str(row.timestamp)[:4] if isinstance(row.timestamp, str) and str(row.timestamp)[:4].isdigit() else ""
    code = row.git_sha if isinstance(row.git_sha, str) and row.git_sha else "unknown"
    notes = [
        f"CanonBench {row.benchmark_version}",
        f"task {task} v{row.task_version} ({task_title})",
        f"metric {row.metric}, subset {row.subset}",
        f"run {row.run_id}",
        f"code {code}",
        f"run spec {row.spec_hash}",
        f"inputs {row.inputs_hash}",
    ]
    checkpoints = checkpoint_lines(row)
    if checkpoints:
        notes.append("checkpoints: " + ", ".join(checkpoints))
    if chance is not None:
        std = f" \u00b1 {format_number(chance.std)}" if chance.std is not None else ""
        verdict = "; indistinguishable from chance by the stored spread" if chance.indistinguishable else ""
        notes.append(f"chance level ({chance.metric}): {format_number(chance.value)}{std}{verdict}")
    if bool(getattr(row, "capped", False) is True):
        notes.append("a capped (--limit) preview, not a full run")
    text_note = ". ".join(notes) + "."
    if local:
        text_note += " " + LOCAL_NOTE
    fields = [
        ("title", f"{submission}: {row.metric} = {value} on the CanonBench task {task} (v{row.task_version})"),
        ("author", " and ".join(authors) if authors else "CanonBench results"),
        ("howpublished", f"CanonBench leaderboard, benchmark version {row.benchmark_version}"),
        ("year", year),
        ("note", text_note),
    ]
    if title:
        fields.insert(1, ("subtitle", title))
    body = ",\n".join(f"  {name:<12} = {{{bibtex_text(value)}}}" for name, value in fields if value)
    return f"@misc{{{cite_key(submission, task, row.task_version, row.run_id)},\n{body}\n}}"


def score_text(submission: str, task: str, row: Any) -> str:
    """The one-line form (for prose)."""
    spread = spread_text(row)
    sha = row.git_sha if isinstance(row.git_sha, str) and row.git_sha else "unknown"
    return (f"{submission}: {row.metric} = {format_number(float(row.value))}{' ' + spread if spread else ''} "
            f"(CanonBench {row.benchmark_version}, task {task} v{row.task_version}, run {row.run_id}, code {sha})")


def is_citable(row: Any) -> bool:
    return row is not None and not pd.isna(row.value)


__all__ = ["LOCAL_NOTE", "bibtex_text", "checkpoint_lines", "cite_key", "is_citable", "score_bibtex", "score_text"]
