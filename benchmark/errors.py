"""Error types. Every user-facing error is one line naming the file and the field at fault."""

from __future__ import annotations

import stat


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


def file_kind(mode: int) -> str:
    """What a non-regular file is, for errors refusing it (``os.stat().st_mode`` -> "FIFO (named pipe)")."""
    kinds = ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISLNK, "symbolic link"))
    return next((kind for test, kind in kinds if test(mode)), "special file")
