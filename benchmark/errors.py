"""Error types. Every user-facing error is one line naming the file and the field at fault."""

from __future__ import annotations


class CanonBenchError(Exception):
    """Base class for errors the CLI reports as one clean line (exit code 2)."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        self.file = str(file) if file is not None else None
        self.field = field
        self.detail = message
        where = ""
        if self.file and self.field:
            where = f"{self.file}: {self.field}: "
        elif self.file:
            where = f"{self.file}: "
        elif self.field:
            where = f"{self.field}: "
        super().__init__(f"{where}{message}")


class ManifestError(CanonBenchError):
    """A submission manifest is malformed or inconsistent."""


class SourceError(CanonBenchError):
    """A checkpoint source cannot be resolved or downloaded."""


class CheckpointError(CanonBenchError):
    """A checkpoint file is missing, unsafe, malformed or inconsistent."""


class TaskError(CanonBenchError):
    """A task cannot run on the given inputs."""
