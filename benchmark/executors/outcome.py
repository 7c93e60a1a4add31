"""What happened to each unit of a run, and the run's plain-text summary."""

from __future__ import annotations

from dataclasses import dataclass, field

OOM_HINT = "try a smaller --batch-size, or another --device (cuda for host memory, cpu for GPU memory)"
MAX_DETAIL = 300  # characters of a failure reason in the summary; the log has it whole


@dataclass
class UnitOutcome:
    submission: str
    task: str
    status: str  # done | cached | not-applicable | would-run | failed | lost-race | interrupted
    detail: str = ""
    runtime_s: float = 0.0


@dataclass
class RunSummary:
    run_id: str
    outcomes: list[UnitOutcome] = field(default_factory=list)
    #: one line per manifest that could not be loaded (set by the CLI, which runs the others)
    rejected: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[UnitOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def render(self) -> str:
        """A plain-text summary: what ran, what was cached, what failed and why."""
        lines = [f"run {self.run_id}:"]
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
            detail = " ".join(o.detail.split())  # one line per unit, whatever the exception said
            if len(detail) > MAX_DETAIL:
                detail = detail[: MAX_DETAIL - 1] + "…"
            extra = f" ({detail})" if detail else ""
            took = f" {o.runtime_s:.1f}s" if o.status == "done" else ""
            lines.append(f"  {o.status:<15} {o.submission} × {o.task}{took}{extra}")
        lines.append("  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else "  nothing to do")
        for line in self.rejected:
            lines.append(f"  {'bad manifest':<15} {line}")
        if self.rejected:
            lines.append(f"  {len(self.rejected)} manifest(s) not run: fix them (`canonbench validate` lists every problem) and rerun")
        if self.failed:
            lines.append("  failed units stored nothing; fix the cause and rerun (finished units are skipped)")
        return "\n".join(lines)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) during a run; ``summary`` says what finished before it."""

    def __init__(self, summary: RunSummary, *, terminated: bool = False):
        super().__init__("interrupted")
        self.summary = summary
        self.terminated = terminated


def failure_detail(exc: BaseException) -> str:
    """One unit's failure reason for the summary (out-of-memory failures get a hint)."""
    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory ({type(exc).__name__}: {first_line}); {OOM_HINT}"
    return f"{type(exc).__name__}: {exc}"


__all__ = ["MAX_DETAIL", "OOM_HINT", "RunInterrupted", "RunSummary", "UnitOutcome", "failure_detail"]
