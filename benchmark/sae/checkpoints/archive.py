"""Zip archives (``.npz``, torch's ``ae.pt``) opened with bounds, read member by member.

A zip's central directory is a list of claims: how many members, where each starts, how big it is
stored and inflated. :class:`BoundedZip` checks those claims against the file before trusting them:

* the end-of-central-directory record: at most ``max_members`` entries and ``MAX_DIRECTORY_BYTES``
  of directory, lying inside the file (checked before ``zipfile`` reads the directory);
* every member: no encryption, stored or deflated only, a local header that agrees with the directory
  (name, method, CRC and sizes), a stored size equal to its inflated size, a declared inflation of at
  most ``MAX_INFLATION`` times its stored size;
* the members tile the archive: each starts where the previous one ends and the last ends where the
  directory starts, so no byte is claimed twice and no member hides data the directory does not list.

Callers read only the members their format needs (:meth:`BoundedZip.read`), each at most the size its
own header declares, so the memory a read takes is bounded by what the format asked for.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from benchmark.errors import CheckpointError

from .common import open_regular_file

MAX_MEMBERS = 1024  # an SAE archive holds a handful of arrays; torch adds ~6 bookkeeping members
MAX_DIRECTORY_BYTES = 1 << 20
MAX_INFLATION = 50  # a deflated float array shrinks by a few percent
INFLATION_SLACK = 64 << 10  # small members (npy headers, tiny arrays) may compress better

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # signature ... name length, extra length (30 bytes)
_LOCAL_SIGNATURE = b"PK\x03\x04"
_DESCRIPTOR_SIGNATURE = b"PK\x07\x08"
_FLAG_ENCRYPTED = 0x1
_FLAG_DESCRIPTOR = 0x8
_UNKNOWN32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Member:
    """A checked member: its directory entry and where its data lies in the file."""

    info: zipfile.ZipInfo
    data_start: int
    end: int  # after the data (and its data descriptor, if any)

    @property
    def name(self) -> str:
        return self.info.filename

    @property
    def size(self) -> int:
        return self.info.file_size


def _zip64_sizes(extra: bytes, usize: int, csize: int) -> tuple[int, int]:
    """A local header's sizes, taken from its zip64 extra field where the header says 0xFFFFFFFF."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + length]
        if tag == 0x0001:
            fields = [v for (v,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
            if usize == _UNKNOWN32 and fields:
                usize = fields.pop(0)
            if csize == _UNKNOWN32 and fields:
                csize = fields.pop(0)
            break
        pos += 4 + length
    return usize, csize


def describe(exc: BaseException) -> str:
    """A non-empty one-line reason for ``exc`` (zipfile raises some errors with no message)."""
    text = str(exc).strip().splitlines()
    if text:
        return text[0][:300]
    if isinstance(exc, EOFError):
        return "the data ends before the size the archive declares"
    return type(exc).__name__


class BoundedZip:
    """A zip archive whose directory claims were checked; see the module docstring.

    ``field`` names the archive-level field in errors (``archive`` for npz, ``data`` for ae.pt).
    """

    def __init__(self, path: Path | str, *, field: str = "archive", max_members: int = MAX_MEMBERS):
        self.path = Path(path)
        self.field = field
        self._handle: BinaryIO = open_regular_file(self.path, field=field)
        try:
            self.file_bytes = os.fstat(self._handle.fileno()).st_size
            self.directory_offset = self._check_end_record(max_members)
            try:
                self._zip = zipfile.ZipFile(self._handle)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, struct.error) as exc:
                raise self.error(f"not a readable zip archive, truncated or corrupt: {describe(exc)}") from None
            infos = self._zip.infolist()
            if len(infos) > max_members:
                raise self.error(f"holds {len(infos)} members (limit {max_members})")
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                twice = sorted({n for n in names if names.count(n) > 1})[0]
                raise self.error(f"member {twice!r} appears twice in the directory")
            self.members = {info.filename: self._check_member(info) for info in infos}
            self._check_tiling()
        except BaseException:
            self._handle.close()
            raise

    # ------------------------------------------------------------------------------- checks
    def error(self, message: str, field: str | None = None) -> CheckpointError:
        return CheckpointError(message, file=self.path, field=field or self.field)

    def _check_end_record(self, max_members: int) -> int:
        """Entry count, directory size and offset from the end record, checked before zipfile reads them."""
        end_record = getattr(zipfile, "_EndRecData", None)
        try:
            record = end_record(self._handle) if end_record is not None else None
        except (OSError, EOFError, struct.error) as exc:
            raise self.error(f"not a readable zip archive, truncated or corrupt: {describe(exc)}") from None
        if not record:
            raise self.error("not a zip archive (no end-of-central-directory record; truncated or corrupt?)")
        entries = record[zipfile._ECD_ENTRIES_TOTAL]
        size, offset = record[zipfile._ECD_SIZE], record[zipfile._ECD_OFFSET]
        if entries > max_members:
            raise self.error(f"directory claims {entries} members (limit {max_members})")
        if size > MAX_DIRECTORY_BYTES:
            raise self.error(f"directory claims {size} bytes (limit {MAX_DIRECTORY_BYTES})")
        location = record[zipfile._ECD_LOCATION]
        if offset + size > location or location > self.file_bytes:
            raise self.error(f"directory claims bytes {offset}..{offset + size} but ends at {location} "
                             "(truncated or corrupt?)")
        return offset

    def _check_member(self, info: zipfile.ZipInfo) -> Member:
        name = info.filename
        if info.flag_bits & _FLAG_ENCRYPTED:
            raise self.error("member is encrypted", field=name)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise self.error(f"compression method {info.compress_type} is not supported (stored or deflated only)",
                             field=name)
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise self.error(f"stored member declares {info.compress_size} bytes stored but {info.file_size} "
                             "inflated", field=name)
        if info.file_size > MAX_INFLATION * info.compress_size + INFLATION_SLACK:
            raise self.error(f"member claims to inflate {info.compress_size} bytes to {info.file_size}; refusing",
                             field=name)
        if info.header_offset + _LOCAL_HEADER.size > self.directory_offset:
            raise self.error(f"directory puts the member at byte {info.header_offset}, past the data", field=name)
        self._handle.seek(info.header_offset)
        raw = self._handle.read(_LOCAL_HEADER.size)
        if len(raw) != _LOCAL_HEADER.size:
            raise self.error("local header is truncated", field=name)
        (signature, _, flags, method, _, _, crc, csize, usize, name_len, extra_len) = _LOCAL_HEADER.unpack(raw)
        local_name = self._handle.read(name_len)
        extra = self._handle.read(extra_len)
        if len(extra) != extra_len:
            raise self.error("local header is truncated", field=name)
        usize, csize = _zip64_sizes(extra, usize, csize)
        encoding = "utf-8" if flags & 0x800 else "cp437"
        if signature != _LOCAL_SIGNATURE or local_name != info.orig_filename.encode(encoding, errors="replace"):
            raise self.error("the directory and the member's own header disagree on where it is", field=name)
        if method != info.compress_type:
            raise self.error("the directory and the member's own header disagree on its compression", field=name)
        data_start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        end = data_start + info.compress_size
        if flags & _FLAG_DESCRIPTOR:
            end = self._check_descriptor(info, end)
        else:
            for what, local, central in (("CRC", crc, info.CRC), ("stored size", csize, info.compress_size),
                                         ("size", usize, info.file_size)):
                if local != _UNKNOWN32 and local != central:
                    raise self.error(f"the directory says {what} {central} but the member's own header says {local}",
                                     field=name)
        if end > self.directory_offset:
            raise self.error(f"data runs to byte {end}, past the start of the directory at {self.directory_offset}",
                             field=name)
        return Member(info=info, data_start=data_start, end=end)

    def _check_descriptor(self, info: zipfile.ZipInfo, at: int) -> int:
        self._handle.seek(at)
        raw = self._handle.read(24)
        body = raw[4:] if raw[:4] == _DESCRIPTOR_SIGNATURE else raw
        skip = 4 if raw[:4] == _DESCRIPTOR_SIGNATURE else 0
        zip64 = info.file_size >= _UNKNOWN32 or info.compress_size >= _UNKNOWN32
        layout, length = ("<IQQ", 20) if zip64 else ("<III", 12)
        if len(body) < length:
            raise self.error("data descriptor is truncated", field=info.filename)
        crc, csize, usize = struct.unpack_from(layout, body)
        if (crc, csize, usize) != (info.CRC, info.compress_size, info.file_size):
            raise self.error("the directory and the member's data descriptor disagree on its CRC or sizes",
                             field=info.filename)
        return at + skip + length

    def _check_tiling(self) -> None:
        cursor = 0
        for member in sorted(self.members.values(), key=lambda m: m.info.header_offset):
            if member.info.header_offset != cursor:
                how = "overlaps the previous member" if member.info.header_offset < cursor else \
                    f"leaves {member.info.header_offset - cursor} unlisted bytes before it"
                raise self.error(f"member at byte {member.info.header_offset} {how}", field=member.name)
            cursor = member.end
        if cursor != self.directory_offset:
            raise self.error(f"{self.directory_offset - cursor} bytes between the last member and the directory "
                             "are not listed in it")

    # ------------------------------------------------------------------------------- reading
    def names(self) -> list[str]:
        return list(self.members)

    def open(self, name: str):
        """A stream of member ``name`` (a checked member; reads stop at its declared size)."""
        return self._zip.open(self.members[name].info)

    def read(self, name: str, *, field: str | None = None) -> bytearray:
        """All of member ``name``: exactly its declared size, CRC-checked."""
        member = self.members[name]
        buffer = bytearray(member.size)
        try:
            with self.open(name) as stream:
                got = stream.readinto(buffer) if member.size else 0
                while got < member.size:
                    more = stream.readinto(memoryview(buffer)[got:])
                    if not more:
                        break
                    got += more
                if got == member.size and stream.read(1):
                    raise self.error("member holds more data than its declared size", field=field or name)
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            raise self.error(f"cannot read the member (truncated or corrupt?): {describe(exc)}",
                             field=field or name) from None
        if got != member.size:
            raise self.error(f"member data ends after {got} of the {member.size} bytes its directory entry declares",
                             field=field or name)
        return buffer

    def close(self) -> None:
        self._zip.close()
        self._handle.close()

    def __enter__(self) -> "BoundedZip":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
