"""Header-only reads of ``torch.save`` zip archives (``ae.pt``), without unpickling and without torch.load.

A torch zip archive holds ``<prefix>/data.pkl`` (a pickle naming, for every tensor, its storage,
offset, shape and stride) and one member ``<prefix>/data/<key>`` per storage. ``data.pkl`` is *never*
given to ``pickle``: :func:`_interpret` walks its opcodes (``pickletools.genops``) on a small stack
machine that knows exactly what a state dict of tensors needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter`` and the ``torch.*Storage`` types) and
builds plain records from them. Any other global or opcode is refused, naming it; nothing in the
file is ever called or imported.

Before a single weight byte is read, every tensor is checked against its storage: the storage member
exists, is stored uncompressed with exactly the bytes its element count declares, and the tensor's
shape and strides describe a dense, non-overlapping block inside it (so a 2 KB file cannot declare a
30000 x 20000 matrix through stride-0 views). Sizes are bounded before they are multiplied.
Tensors are then read one by one, each storage once, only for the names a format asks for.
"""

from __future__ import annotations

import io
import math
import pickletools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import CheckpointError

from .archive import BoundedZip

MAX_PICKLE_BYTES = 1 << 20  # data.pkl of a state dict with a few dozen tensors is a few KB
MAX_TENSORS = 1024
MAX_NDIM = 8
MAX_DIM = 1 << 40
ACCEPTED = ("ae.pt written by torch.save (a zip archive) of a state dict holding only tensors, "
            "safetensors, npz")

STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class StorageRef:
    key: str
    dtype: torch.dtype
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class TensorRef:
    """One tensor as ``data.pkl`` declares it (checked against its storage by :class:`TorchArchive`)."""

    name: str
    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)


# ------------------------------------------------------------------------------ the pickle machine
class _Refused(Exception):
    """data.pkl asks for something a state dict of tensors does not need."""


class _Global:
    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class _StateDict(dict):
    """An ``OrderedDict`` built by the pickle (its ``_metadata`` attribute is accepted and dropped)."""


class _Tensor:
    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage: Any, offset: Any, shape: Any, stride: Any):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride


_ALLOWED_GLOBALS = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
                    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_parameter")}
_ALLOWED_GLOBALS |= {("torch", name) for name in STORAGE_DTYPES}

_MARK = object()


def _reduce(func: Any, args: Any) -> Any:
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        raise _Refused("a call of something that is not an allowed function")
    name = (func.module, func.name)
    if name == ("collections", "OrderedDict"):
        if args and not (len(args) == 1 and isinstance(args[0], list) and all(
                isinstance(p, tuple) and len(p) == 2 for p in args[0])):
            raise _Refused("OrderedDict called with unexpected arguments")
        return _StateDict(args[0] if args else ())
    if name in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
        if len(args) < 4:
            raise _Refused("_rebuild_tensor called with too few arguments")
        storage, offset, shape, stride = args[:4]
        for extra in args[4:]:  # requires_grad, backward hooks (an empty OrderedDict), metadata
            if not (extra is None or isinstance(extra, bool) or (isinstance(extra, dict) and not extra)):
                raise _Refused("_rebuild_tensor_v2 called with tensor hooks or metadata")
        return _Tensor(storage, offset, shape, stride)
    if name == ("torch._utils", "_rebuild_parameter"):
        if not args or not isinstance(args[0], _Tensor):
            raise _Refused("_rebuild_parameter called without a tensor")
        return args[0]
    raise _Refused(f"a call of {func.module}.{func.name}")


def _persistent(pid: Any) -> StorageRef:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
        raise _Refused("a persistent id that is not a tensor storage")
    _, kind, key, location, numel = pid
    if not isinstance(kind, _Global) or kind.module != "torch" or kind.name not in STORAGE_DTYPES:
        raise _Refused("a storage of an unknown type")
    if not isinstance(key, str) or not _STORAGE_KEY.fullmatch(key) or not isinstance(location, str):
        raise _Refused("a storage with a malformed key or location")
    if not isinstance(numel, int) or isinstance(numel, bool) or not 0 <= numel <= MAX_DIM:
        raise _Refused(f"a storage declaring {str(numel)[:40]} elements")
    return StorageRef(key=key, dtype=STORAGE_DTYPES[kind.name], numel=numel)


def _pop_mark(stack: list) -> list:
    for index in range(len(stack) - 1, -1, -1):
        if stack[index] is _MARK:
            items = stack[index + 1:]
            del stack[index:]
            return items
    raise _Refused("a malformed pickle (no MARK)")


def _interpret(data: bytes) -> Any:
    """The object ``data`` (a pickle) describes, built from allowed parts only (see module docstring)."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    ops: Iterator = pickletools.genops(io.BytesIO(data))
    for opcode, arg, _ in ops:
        name = opcode.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            if len(stack) != 1:
                raise _Refused("a malformed pickle (stack not empty at STOP)")
            return stack[0]
        if name == "MARK":
            stack.append(_MARK)
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            if int(arg) not in memo:
                raise _Refused("a malformed pickle (unknown memo entry)")
            stack.append(memo[int(arg)])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
            else:
                attr, module = stack.pop(), stack.pop()
                if not isinstance(module, str) or not isinstance(attr, str):
                    raise _Refused("a malformed pickle (STACK_GLOBAL of non-strings)")
            if (module, attr) not in _ALLOWED_GLOBALS:
                raise _Refused(f"{module[:80]}.{attr[:80]}")
            stack.append(_Global(module, attr))
        elif name == "REDUCE":
            args = stack.pop()
            stack.append(_reduce(stack.pop(), args))
        elif name == "BINPERSID":
            stack.append(_persistent(stack.pop()))
        elif name == "BUILD":
            state = stack.pop()
            target = stack[-1]
            if not isinstance(target, _StateDict) or not isinstance(state, dict) or set(state) - {"_metadata"}:
                raise _Refused("BUILD of something that is not a state dict's _metadata")
        elif name in ("EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT"):
            stack.append({"EMPTY_TUPLE": (), "EMPTY_LIST": [], "EMPTY_DICT": {}}[name])
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            count = int(name[-1])
            items = stack[-count:]
            del stack[-count:]
            if _MARK in items or len(items) != count:
                raise _Refused("a malformed pickle (short tuple)")
            stack.append(tuple(items))
        elif name == "TUPLE":
            stack.append(tuple(_pop_mark(stack)))
        elif name == "LIST":
            stack.append(list(_pop_mark(stack)))
        elif name == "DICT":
            items = _pop_mark(stack)
            stack.append(_pairs_into({}, items))
        elif name == "APPEND":
            value = stack.pop()
            _list(stack[-1]).append(value)
        elif name == "APPENDS":
            items = _pop_mark(stack)
            _list(stack[-1]).extend(items)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            _pairs_into(_dict(stack[-1]), [key, value])
        elif name == "SETITEMS":
            items = _pop_mark(stack)
            _pairs_into(_dict(stack[-1]), items)
        elif name in ("BININT", "BININT1", "BININT2", "LONG1", "INT", "BINFLOAT", "BINUNICODE", "SHORT_BINUNICODE",
                      "BINUNICODE8", "UNICODE", "NONE", "NEWTRUE", "NEWFALSE"):
            stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}.get(name, arg))
        else:
            raise _Refused(f"pickle opcode {name}")
        if len(stack) > 100_000:
            raise _Refused("a malformed pickle (stack too deep)")
    raise _Refused("a malformed pickle (no STOP)")


def _list(value: Any) -> list:
    if not isinstance(value, list):
        raise _Refused("a malformed pickle (APPEND to a non-list)")
    return value


def _dict(value: Any) -> dict:
    if not isinstance(value, dict):
        raise _Refused("a malformed pickle (SETITEM on a non-dict)")
    return value


def _pairs_into(target: dict, items: list) -> dict:
    if len(items) % 2:
        raise _Refused("a malformed pickle (odd SETITEMS)")
    for key, value in zip(items[::2], items[1::2]):
        if not isinstance(key, (str, int)) or key in target:
            raise _Refused("a dict with a non-string or repeated key")
        target[key] = value
    return target


# ------------------------------------------------------------------------------------- the archive
class TorchArchive:
    """The tensors a ``torch.save`` zip archive declares, checked against their storages; data on demand."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._zip = BoundedZip(self.path, field="data")
        try:
            self.prefix = self._find_prefix()
            self._check_byteorder()
            self.tensors = self._read_tensors()
        except BaseException:
            self._zip.close()
            raise
        self._storages: dict[str, torch.Tensor] = {}

    def error(self, message: str, field: str) -> CheckpointError:
        return CheckpointError(message, file=self.path, field=field)

    def _find_prefix(self) -> str:
        pickles = [n for n in self._zip.names() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise self.error("not a torch.save archive (expected one <name>/data.pkl member)", "data")
        return pickles[0][: -len("data.pkl")]

    def _check_byteorder(self) -> None:
        member = self.prefix + "byteorder"
        if member in self._zip.members:
            if self._zip.members[member].size > 16:
                raise self.error("byteorder member is too large", "byteorder")
            order = bytes(self._zip.read(member, field="byteorder")).strip()
        else:
            order = b"little"  # torch before 2.1 wrote no byteorder member: always little-endian
        if order != b"little" or sys.byteorder != "little":
            raise self.error(f"byte order {order[:16]!r} is not supported (little-endian only)", "byteorder")

    def _read_tensors(self) -> dict[str, TensorRef]:
        member = self._zip.members[self.prefix + "data.pkl"]
        if member.size > MAX_PICKLE_BYTES:
            raise self.error(f"data.pkl is {member.size} bytes (limit {MAX_PICKLE_BYTES}); a state dict's is a few KB",
                             "pickle")
        raw = bytes(self._zip.read(member.name, field="pickle"))
        try:
            state = _interpret(raw)
        except _Refused as exc:
            raise self.error(f"refused: the pickle needs code to load ({exc}), and nothing in it was run; only a "
                             f"state dict of plain tensors is read. Accepted: {ACCEPTED}", "pickle") from None
        except (ValueError, EOFError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError) as exc:
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise self.error(f"data.pkl is not a readable pickle (truncated or corrupt?): {detail}", "pickle") from None
        if not isinstance(state, dict):
            raise self.error("expected a state dict of named tensors", "state_dict")
        if len(state) > MAX_TENSORS:
            raise self.error(f"holds {len(state)} entries (limit {MAX_TENSORS})", "state_dict")
        tensors: dict[str, TensorRef] = {}
        storages: dict[str, StorageRef] = {}
        for name, value in state.items():
            if not isinstance(name, str) or not isinstance(value, _Tensor):
                raise self.error("expected a state dict of named tensors", "state_dict")
            tensor = self._check_tensor(name, value)
            known = storages.setdefault(tensor.storage.key, tensor.storage)
            if known != tensor.storage:
                raise self.error(f"storage {tensor.storage.key} is declared twice with different types or sizes",
                                 name)
            tensors[name] = tensor
        return tensors

    def _check_tensor(self, name: str, value: _Tensor) -> TensorRef:
        """Shape, strides and offset bounded, and a dense, non-overlapping block inside a storage whose
        member holds exactly the bytes it declares. Nothing is read or allocated here."""
        storage, offset, shape, stride = value.storage, value.offset, value.shape, value.stride
        if not isinstance(storage, StorageRef):
            raise self.error("tensor has no storage", name)
        if not (isinstance(shape, tuple) and isinstance(stride, tuple) and len(shape) == len(stride) <= MAX_NDIM
                and all(_bounded(v) for v in (*shape, *stride)) and _bounded(offset)):
            raise self.error(f"shape {_clip(shape)} / stride {_clip(stride)} / offset {_clip(offset)} are not "
                             f"up to {MAX_NDIM} non-negative sizes of at most {MAX_DIM}", name)
        numel = math.prod(shape)
        if numel > storage.numel - min(offset, storage.numel):
            raise self.error(f"shape {shape} declares {numel} elements but its storage holds "
                             f"{storage.numel - min(offset, storage.numel)} after offset {offset}: the storage is "
                             "not what the shape says (stride-0 or overlapping views are refused)", name)
        if numel and not _dense(shape, stride):
            raise self.error(f"strides {stride} for shape {shape} make elements overlap or leave gaps; only dense "
                             "tensors are read", name)
        member = self.prefix + "data/" + storage.key
        if member not in self._zip.members:
            raise self.error(f"storage {storage.key} is missing from the archive", name)
        info = self._zip.members[member].info
        if info.compress_type != 0:
            raise self.error(f"storage {storage.key} is compressed (torch stores tensors uncompressed)", name)
        if info.file_size != storage.nbytes:
            raise self.error(f"storage {storage.key} declares {storage.numel} x {storage.dtype.itemsize} bytes but "
                             f"its member holds {info.file_size}", name)
        return TensorRef(name=name, storage=storage, offset=offset, shape=shape, stride=stride)

    # ------------------------------------------------------------------------------------ reading
    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> TensorRef:
        return self.tensors[name]

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def load(self, name: str) -> torch.Tensor:
        """Tensor ``name`` (its storage is read once, exactly its declared bytes)."""
        ref = self.tensors[name]
        storage = self._storages.get(ref.storage.key)
        if storage is None:
            raw = self._zip.read(self.prefix + "data/" + ref.storage.key, field=name)
            storage = torch.frombuffer(raw, dtype=ref.dtype) if raw else torch.empty(0, dtype=ref.dtype)
            self._storages[ref.storage.key] = storage
        if ref.numel() == 0:
            return torch.empty(ref.shape, dtype=ref.dtype)
        return storage.as_strided(ref.shape, ref.stride, ref.offset)

    def close(self) -> None:
        self._storages.clear()
        self._zip.close()

    def __enter__(self) -> "TorchArchive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _bounded(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DIM


def _dense(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """True when the strides lay the elements out densely with no overlap (any order of dimensions)."""
    expected = 1
    for size, step in sorted((p for p in zip(shape, stride) if p[0] != 1), key=lambda p: p[1]):
        if step != expected:
            return False
        expected *= size
    return True


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"
