"""Node checkpoints: the on-disk checkpoint format and atomic persistence.

Owns: the byte layout of a checkpoint file (a versioned msgpack header that
describes the state's structure, followed by raw little-endian tensor bytes and
a BLAKE2b-256 trailer), strict validation when reading one back, writing files
atomically (temp file + fsync + rename + directory fsync), and a directory of
rolling checkpoints that falls back to the newest *good* one after a crash.

Must not touch: sockets, messages, training or round logic, and the decision of
*when* to checkpoint (that is the node's). No pickle anywhere: nothing here
imports it or calls ``torch.load``; a checkpoint can only ever decode to
tensors, numpy arrays and plain Python values.

What a checkpoint holds (`NodeState`, plus the round counter):

- ``trainer``: `LocalTrainer.state_dict()` (model params, optimizer state with
  momentum buffers / Adam moments and step counters, the shuffling generator
  state, rounds) -- any tree of the values below;
- ``reference``: the node's model delta/reference, if any (e.g. a flat float32
  numpy vector), or None;
- ``metrics``: the node's cumulative metrics, a dict of plain values (no tensors);
- ``meta``: a dict of plain values for the caller (node id, task spec, seed...).

Storable values (checked on save, restored with the same Python types):
``None``, ``bool``, ``int`` (-2**63 .. 2**64-1), ``float``, ``str``, ``bytes``,
``list``, ``tuple``, ``dict`` with ``str`` or ``int`` keys, dense
``torch.Tensor`` (restored on the CPU, detached, bit-exact, same dtype and
shape, 0-d included) and ``numpy.ndarray`` (same dtype and shape). Plain values must have exactly
these types: subclasses (numpy scalars, IntEnum...) raise TypeError on save.
Tensor subclasses such as ``nn.Parameter`` are stored as their plain data.
Tensor dtypes allowed: see `TORCH_DTYPES` / `NUMPY_DTYPES`.

File layout, version 1 (all integers little-endian)::

    offset 0    magic  b"P2PFLCKP"                          8 bytes
    offset 8    format version (u32) = 1                     4 bytes
    offset 12   header length H (u32)                        4 bytes
    offset 16   header: msgpack map                          H bytes
                zero padding up to a multiple of 64 (data start D0)
    D0          data section: raw tensor bytes, each tensor at a
                64-byte aligned offset, zero padding between   N bytes
    D0+N        end marker b"P2PCKEND"                      8 bytes
    D0+N+8      BLAKE2b-256 of every byte before it         32 bytes

The header map has exactly the keys ``round`` (int >= 0), ``created`` (unix
time, float), ``writer`` (``{"p2pfl": str, "torch": str}``), ``data_nbytes``
(N) and ``tree``. The tree mirrors the state: a plain leaf (None, bool, int,
float, str, bytes) is stored as itself; every container or array is a
single-key map whose key is its tag::

    {"dict":    [[key, node], ...]}     # keys str or int, unique, in order
    {"list":    [node, ...]}
    {"tuple":   [node, ...]}
    {"tensor":  {"dtype": "float32", "shape": [...], "offset": o, "nbytes": n}}
    {"ndarray": {"dtype": "float32", "shape": [...], "offset": o, "nbytes": n}}

``offset`` is relative to D0. Because dicts are stored as key/value pairs, int
keys (the optimizer's per-parameter state) need no msgpack map with int keys:
the header is decoded with msgpack's default ``strict_map_key=True``, and
``raw=False`` (strings must be valid UTF-8).

Reading checks, in order: minimum size, magic, version, header length within
the file, end marker, checksum, msgpack decoding, header keys and types, exact
file size, then every tree node (tags, key types, duplicate keys, nesting
depth, dtype allowlist, shape/size agreement, offsets within the data
section, no overlapping tensors, bool bytes 0/1). Any failure raises
`CheckpointError` with the reason; a single flipped byte anywhere, or any
truncation, is always detected.

Directory layout (`CheckpointStore`): ``ckpt-{round:08d}.p2c`` files, written
through ``.ckpt-*.tmp-*`` temp files (a crash leaves at most a temp file,
which loading ignores and cleans); a checkpoint found corrupted by
`CheckpointStore.load_latest` is renamed to ``*.p2c.corrupt`` and skipped.
One writer per directory.

A checkpoint holds the node's private model, so every file written here (and
by `write_private`, which the simulator uses for its models) is created mode
0600 and a store's directory 0700: never readable by others, not even while
it is being written.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import secrets
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import msgpack
import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "CheckpointRefused",
    "CheckpointStore",
    "FORMAT_VERSION",
    "NodeState",
    "decode",
    "encode",
    "read_checkpoint",
    "write_checkpoint",
    "write_private",
]

log = logging.getLogger(__name__)

MAGIC = b"P2PFLCKP"
END_MARKER = b"P2PCKEND"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII")  # magic, version, header length
DIGEST_SIZE = 32  # BLAKE2b-256
TRAILER_SIZE = len(END_MARKER) + DIGEST_SIZE
ALIGN = 64
MAX_DEPTH = 64
MAX_NDIM = 32
MIN_SIZE = _PREFIX.size + TRAILER_SIZE
SUFFIX = ".p2c"
CORRUPT_SUFFIX = ".corrupt"
_NAME_RE = re.compile(r"^ckpt-(\d{8,})\.p2c$")
_TMP_RE = re.compile(r"^\.ckpt-.*\.tmp-[0-9a-f]+$")
_HEADER_KEYS = {"round", "created", "writer", "data_nbytes", "tree"}
_STATE_KEYS = ("trainer", "reference", "metrics", "meta")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1

# dtype name -> (torch dtype, little-endian numpy dtype used to carry the bytes)
TORCH_DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float16": (torch.float16, np.dtype("<f2")),
    "bfloat16": (torch.bfloat16, np.dtype("<i2")),  # carried as its 16-bit pattern
    "float32": (torch.float32, np.dtype("<f4")),
    "float64": (torch.float64, np.dtype("<f8")),
    "uint8": (torch.uint8, np.dtype("u1")),
    "int8": (torch.int8, np.dtype("i1")),
    "int16": (torch.int16, np.dtype("<i2")),
    "int32": (torch.int32, np.dtype("<i4")),
    "int64": (torch.int64, np.dtype("<i8")),
    "bool": (torch.bool, np.dtype("?")),
}
_TORCH_NAMES = {tdt: name for name, (tdt, _) in TORCH_DTYPES.items()}

NUMPY_DTYPES: dict[str, np.dtype] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "uint8": np.dtype("u1"),
    "int8": np.dtype("i1"),
    "uint16": np.dtype("<u2"),
    "int16": np.dtype("<i2"),
    "uint32": np.dtype("<u4"),
    "int32": np.dtype("<i4"),
    "uint64": np.dtype("<u8"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("?"),
}

_PLAIN = (type(None), bool, int, float, str, bytes)


class CheckpointError(Exception):
    """A checkpoint file is unreadable: truncated, corrupted, wrong version or bad structure."""


class CheckpointRefused(Exception):
    """The checkpoints in a node's directory cannot be resumed from; the message says why and what to do."""


@dataclass
class NodeState:
    """Everything a node needs to resume after a crash (besides the round counter)."""

    trainer: Any
    reference: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- encoding


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _Encoder:
    """Walks a state tree, collecting tensor bytes and building the header tree."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def _add_bytes(self, raw: bytes) -> int:
        pad = _align(self.size) - self.size
        if pad:
            self.chunks.append(bytes(pad))
            self.size += pad
        offset = self.size
        self.chunks.append(raw)
        self.size += len(raw)
        return offset

    def _array_leaf(self, arr: np.ndarray, dtype_name: str, wire: np.dtype) -> dict[str, Any]:
        raw = np.ascontiguousarray(arr).astype(wire, copy=False).tobytes()
        return {
            "dtype": dtype_name,
            "shape": [int(d) for d in arr.shape],
            "offset": self._add_bytes(raw),
            "nbytes": len(raw),
        }

    def node(self, value: Any, path: str, depth: int, arrays: bool = True) -> Any:
        if depth > MAX_DEPTH:
            raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels (a cycle?)")
        kind = type(value)
        if kind in _PLAIN:
            if kind is int and not _INT_MIN <= value <= _INT_MAX:
                raise ValueError(f"{path}: int {value} does not fit in 64 bits")
            return value
        if kind is dict:
            pairs = []
            for k, v in value.items():
                if type(k) not in (str, int):
                    raise TypeError(f"{path}: dict keys must be str or int, got {type(k).__name__}")
                if type(k) is int and not _INT_MIN <= k <= _INT_MAX:
                    raise ValueError(f"{path}: int key {k} does not fit in 64 bits")
                pairs.append([k, self.node(v, f"{path}[{k!r}]", depth + 1, arrays)])
            return {"dict": pairs}
        if kind is list or kind is tuple:
            items = [self.node(v, f"{path}[{i}]", depth + 1, arrays) for i, v in enumerate(value)]
            return {"list" if kind is list else "tuple": items}
        if isinstance(value, torch.Tensor):
            if not arrays:
                raise TypeError(f"{path}: tensors are not allowed here (plain values only)")
            return {"tensor": self._tensor(value, path)}
        if kind is np.ndarray:
            if not arrays:
                raise TypeError(f"{path}: arrays are not allowed here (plain values only)")
            name = value.dtype.name
            if name not in NUMPY_DTYPES or value.dtype.fields is not None:
                raise TypeError(f"{path}: numpy dtype {value.dtype} is not storable")
            return {"ndarray": self._array_leaf(value, name, NUMPY_DTYPES[name])}
        raise TypeError(f"{path}: cannot store a value of type {kind.__module__}.{kind.__qualname__}")

    def _tensor(self, t: torch.Tensor, path: str) -> dict[str, Any]:
        if t.layout != torch.strided:
            raise TypeError(f"{path}: only dense tensors are storable, got layout {t.layout}")
        if t.is_quantized or t.is_complex():
            raise TypeError(f"{path}: tensor dtype {t.dtype} is not storable")
        name = _TORCH_NAMES.get(t.dtype)
        if name is None:
            raise TypeError(f"{path}: tensor dtype {t.dtype} is not storable")
        data = t.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        arr = data.numpy()
        leaf = self._array_leaf(arr, name, TORCH_DTYPES[name][1])
        leaf["shape"] = [int(d) for d in t.shape]
        return leaf


def _torch_version() -> str:
    return str(torch.__version__)


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("p2pfl")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


def _encode_chunks(round: int, state: NodeState) -> tuple[list[bytes], bytes]:
    """The file as a list of chunks (without the digest) and its BLAKE2b-256 digest."""
    if type(round) is not int or round < 0:
        raise ValueError(f"round must be a non-negative int, got {round!r}")
    if not isinstance(state, NodeState):
        raise TypeError(f"state must be a NodeState, got {type(state).__name__}")
    for name in ("metrics", "meta"):
        if type(getattr(state, name)) is not dict:
            raise TypeError(f"state.{name} must be a dict, got {type(getattr(state, name)).__name__}")
    enc = _Encoder()
    tree = {
        "dict": [
            ["trainer", enc.node(state.trainer, "trainer", 1)],
            ["reference", enc.node(state.reference, "reference", 1)],
            ["metrics", enc.node(state.metrics, "metrics", 1, arrays=False)],
            ["meta", enc.node(state.meta, "meta", 1, arrays=False)],
        ]
    }
    header = msgpack.packb(
        {
            "round": round,
            "created": time.time(),
            "writer": {"p2pfl": _package_version(), "torch": _torch_version()},
            "data_nbytes": enc.size,
            "tree": tree,
        },
        use_bin_type=True,
    )
    if len(header) > 0xFFFFFFFF:
        raise ValueError("checkpoint header exceeds 4 GiB")
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header))
    head_len = _PREFIX.size + len(header)
    chunks = [prefix, header, bytes(_align(head_len) - head_len), *enc.chunks, END_MARKER]
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    for c in chunks:
        h.update(c)
    return chunks, h.digest()


def encode(round: int, state: NodeState) -> bytes:
    """The checkpoint file's bytes for `state` at `round`.

    Raises TypeError / ValueError if `state` holds something that cannot be stored.
    """
    chunks, digest = _encode_chunks(round, state)
    return b"".join(chunks) + digest


# ----------------------------------------------------------------------------- decoding


class _Decoder:
    def __init__(self, data: memoryview, start: int, nbytes: int) -> None:
        self.data = data
        self.start = start
        self.nbytes = nbytes
        self.spans: list[tuple[int, int, str]] = []

    def node(self, n: Any, path: str, depth: int, arrays: bool = True) -> Any:
        if depth > MAX_DEPTH:
            raise CheckpointError(f"bad structure: {path} nested deeper than {MAX_DEPTH} levels")
        kind = type(n)
        if kind in _PLAIN:
            return n
        if kind is not dict or len(n) != 1:
            raise CheckpointError(f"bad structure: {path} is a {kind.__name__}, not a tagged node")
        ((tag, body),) = n.items()
        if tag == "dict":
            if type(body) is not list:
                raise CheckpointError(f"bad structure: {path} dict body is not a list of pairs")
            out: dict[Any, Any] = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise CheckpointError(f"bad structure: {path} has a dict entry that is not a pair")
                k, v = pair
                if type(k) not in (str, int):
                    raise CheckpointError(f"bad structure: {path} has a {type(k).__name__} dict key")
                if k in out:
                    raise CheckpointError(f"bad structure: {path} has duplicate key {k!r}")
                out[k] = self.node(v, f"{path}[{k!r}]", depth + 1, arrays)
            return out
        if tag in ("list", "tuple"):
            if type(body) is not list:
                raise CheckpointError(f"bad structure: {path} {tag} body is not a list")
            items = [self.node(v, f"{path}[{i}]", depth + 1, arrays) for i, v in enumerate(body)]
            return items if tag == "list" else tuple(items)
        if tag in ("tensor", "ndarray"):
            if not arrays:
                raise CheckpointError(f"bad structure: {path} holds a {tag} where plain values belong")
            return self._array(body, path, tag)
        raise CheckpointError(f"bad structure: {path} has unknown tag {tag!r}")

    def _array(self, leaf: Any, path: str, tag: str) -> Any:
        if type(leaf) is not dict or set(leaf) != {"dtype", "shape", "offset", "nbytes"}:
            raise CheckpointError(
                f"bad structure: {path} {tag} leaf must have exactly dtype, shape, offset, nbytes"
            )
        name, shape, offset, nbytes = leaf["dtype"], leaf["shape"], leaf["offset"], leaf["nbytes"]
        table = TORCH_DTYPES if tag == "tensor" else NUMPY_DTYPES
        if type(name) is not str or name not in table:
            raise CheckpointError(f"bad structure: {path} has disallowed dtype {name!r}")
        wire = table[name][1] if tag == "tensor" else table[name]
        if (
            type(shape) is not list
            or len(shape) > MAX_NDIM
            or any(type(d) is not int or d < 0 for d in shape)
        ):
            raise CheckpointError(f"bad structure: {path} has invalid shape {shape!r}")
        for what, v in (("offset", offset), ("nbytes", nbytes)):
            if type(v) is not int or v < 0:
                raise CheckpointError(f"bad structure: {path} has invalid {what} {v!r}")
        count = math.prod(shape)
        if count * wire.itemsize != nbytes:
            raise CheckpointError(
                f"bad structure: {path} shape {shape} of {name} needs {count * wire.itemsize} "
                f"bytes, header says {nbytes}"
            )
        if offset + nbytes > self.nbytes:
            raise CheckpointError(
                f"bad structure: {path} bytes [{offset}, {offset + nbytes}) lie outside the "
                f"data section of {self.nbytes} bytes"
            )
        if nbytes:
            self.spans.append((offset, offset + nbytes, path))
        begin = self.start + offset
        arr = np.frombuffer(self.data[begin : begin + nbytes], dtype=wire, count=count)
        if wire.kind == "b" and count and arr.view(np.uint8).max() > 1:
            raise CheckpointError(f"bad structure: {path} bool data holds bytes other than 0/1")
        arr = arr.reshape(shape).astype(wire.newbyteorder("="), copy=True)
        if tag == "ndarray":
            return arr
        t = torch.from_numpy(arr)
        if name == "bfloat16":
            t = t.view(torch.bfloat16)
        return t

    def check_overlaps(self) -> None:
        self.spans.sort()
        for (_, end, a), (begin, _, b) in zip(self.spans, self.spans[1:]):
            if begin < end:
                raise CheckpointError(f"bad structure: tensor data of {a} and {b} overlap")


def decode(data: bytes | bytearray | memoryview) -> tuple[int, NodeState]:
    """Parse and fully validate a checkpoint file's bytes; return (round, state).

    Raises CheckpointError with the reason on anything wrong.
    """
    buf = memoryview(data).cast("B")
    size = len(buf)
    if size < MIN_SIZE:
        raise CheckpointError(f"truncated: {size} bytes is shorter than any checkpoint ({MIN_SIZE})")
    magic, version, header_len = _PREFIX.unpack_from(buf, 0)
    if magic != MAGIC:
        raise CheckpointError(f"not a p2pfl checkpoint (magic {bytes(magic)!r})")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"unsupported checkpoint format version {version} (this reader knows {FORMAT_VERSION})"
        )
    data_start = _align(_PREFIX.size + header_len)
    if data_start + TRAILER_SIZE > size:
        raise CheckpointError(
            f"truncated or corrupted: header length {header_len} does not fit in {size} bytes"
        )
    body_end = size - DIGEST_SIZE
    if bytes(buf[body_end - len(END_MARKER) : body_end]) != END_MARKER:
        raise CheckpointError("truncated or corrupted: end marker missing")
    digest = hashlib.blake2b(buf[:body_end], digest_size=DIGEST_SIZE).digest()
    if digest != bytes(buf[body_end:]):
        raise CheckpointError("checksum mismatch: the file is corrupted")
    try:
        header = msgpack.unpackb(
            buf[_PREFIX.size : _PREFIX.size + header_len], raw=False, use_list=True
        )
    except Exception as exc:
        raise CheckpointError(f"bad header: cannot decode msgpack ({exc})") from exc
    if type(header) is not dict or set(header) != _HEADER_KEYS:
        keys = sorted(map(str, header)) if type(header) is dict else type(header).__name__
        raise CheckpointError(f"bad header: expected keys {sorted(_HEADER_KEYS)}, got {keys}")
    round_, data_nbytes = header["round"], header["data_nbytes"]
    if type(round_) is not int or round_ < 0:
        raise CheckpointError(f"bad header: round {round_!r} is not a non-negative int")
    if type(header["created"]) not in (int, float):
        raise CheckpointError("bad header: created is not a number")
    writer = header["writer"]
    if type(writer) is not dict or any(type(k) is not str or type(v) is not str for k, v in writer.items()):
        raise CheckpointError("bad header: writer must map str to str")
    if type(data_nbytes) is not int or data_nbytes < 0:
        raise CheckpointError(f"bad header: data_nbytes {data_nbytes!r} is not a non-negative int")
    expected = data_start + data_nbytes + TRAILER_SIZE
    if expected != size:
        raise CheckpointError(
            f"bad structure: header describes a {expected}-byte file, the file has {size} bytes"
        )
    if any(buf[_PREFIX.size + header_len : data_start]):
        raise CheckpointError("bad structure: header padding is not zero")

    dec = _Decoder(buf, data_start, data_nbytes)
    tree = header["tree"]
    if (
        type(tree) is not dict
        or set(tree) != {"dict"}
        or type(tree["dict"]) is not list
        or [p[0] if type(p) is list and p else None for p in tree["dict"]] != list(_STATE_KEYS)
    ):
        raise CheckpointError(f"bad structure: the tree root must be a dict of {list(_STATE_KEYS)}")
    parts: dict[str, Any] = {}
    for pair in tree["dict"]:
        if len(pair) != 2:
            raise CheckpointError("bad structure: the tree root has an entry that is not a pair")
        key, node = pair
        parts[key] = dec.node(node, key, 1, arrays=key in ("trainer", "reference"))
    dec.check_overlaps()
    for key in ("metrics", "meta"):
        if type(parts[key]) is not dict:
            raise CheckpointError(f"bad structure: {key} is a {type(parts[key]).__name__}, not a dict")
    return round_, NodeState(**parts)


# ----------------------------------------------------------------------------- files


def _fsync_dir(directory: Path) -> None:
    if sys.platform == "win32":  # directories cannot be opened for fsync there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: str | os.PathLike[str], chunks: Iterable[bytes]) -> Path:
    """Write `chunks` to `path` atomically, readable and writable by the owner only (0600).

    Temp file created 0600 (os.open, so no moment with wider permissions), fsync, rename,
    fsync directory: either the old file (or none) or the complete new one is at `path`,
    even after a crash.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def write_checkpoint(path: str | os.PathLike[str], round: int, state: NodeState) -> Path:
    """Write a checkpoint to `path` atomically and privately (see `write_private`)."""
    chunks, digest = _encode_chunks(round, state)
    return write_private(path, [*chunks, digest])


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[int, NodeState]:
    """Read and validate one checkpoint file. CheckpointError if it is bad; OSError if unreadable."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return decode(data)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


class CheckpointStore:
    """Rolling checkpoints of one node in one directory (one writer per directory).

    `save` writes ``ckpt-{round:08d}.p2c`` atomically and keeps the newest `keep`;
    `load_latest` returns the newest checkpoint that reads back intact and lists in `unusable`
    the files it had to skip; `discard` removes every checkpoint, for a fresh start.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 2) -> None:
        if type(keep) is not int or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep
        self.unusable: list[str] = []  # why each file skipped by the last load_latest was skipped

    def path_for(self, round: int) -> Path:
        return self.directory / f"ckpt-{round:08d}{SUFFIX}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(round, path) of every checkpoint file present, oldest first (unvalidated)."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            m = _NAME_RE.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save(self, round: int, state: NodeState) -> Path:
        """Atomically write the checkpoint of `round`, then prune to the newest `keep`."""
        if type(round) is not int or round < 0:
            raise ValueError(f"round must be a non-negative int, got {round!r}")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = write_checkpoint(self.path_for(round), round, state)
        self._prune(keep_path=path)
        return path

    def load_latest(self) -> tuple[int, NodeState] | None:
        """The newest intact checkpoint as (round, state), or None if there is none.

        Corrupted or truncated files are logged at WARNING, renamed to ``*.corrupt``
        and skipped; files that cannot be read (OSError) are logged and skipped.
        Leftover temp files of an interrupted save are removed.
        """
        self._clean_temp()
        self.unusable = []
        for round_, path in reversed(self.checkpoints()):
            try:
                got_round, state = read_checkpoint(path)
                if got_round != round_:
                    raise CheckpointError(
                        f"{path}: file name says round {round_}, header says {got_round}"
                    )
            except CheckpointError as exc:
                log.warning("skipping corrupted checkpoint: %s", exc)
                self.unusable.append(str(exc))
                self._quarantine(path)
                continue
            except OSError as exc:
                log.warning("skipping unreadable checkpoint %s: %s", path, exc)
                self.unusable.append(f"{path}: {exc.strerror or exc}")
                continue
            return got_round, state
        return None

    def quarantined(self) -> list[Path]:
        """Checkpoints an earlier `load_latest` found corrupted and set aside (``*.corrupt``)."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir()
                      if p.name.endswith(SUFFIX + CORRUPT_SUFFIX) and _NAME_RE.match(p.name[: -len(CORRUPT_SUFFIX)]))

    def discard(self) -> int:
        """Delete every checkpoint, set-aside corrupted one and temp file; returns how many files went.

        For a deliberate fresh start: the old files must go, or the next restart would resume
        from the old run's newest round rather than the new run's.
        """
        doomed = [p for _, p in self.checkpoints()] + self.quarantined()
        for p in doomed:
            p.unlink(missing_ok=True)
        self._clean_temp()
        return len(doomed)

    def _quarantine(self, path: Path) -> None:
        try:
            os.replace(path, path.with_name(path.name + CORRUPT_SUFFIX))
        except OSError as exc:
            log.warning("could not rename corrupted checkpoint %s: %s", path, exc)

    def _clean_temp(self) -> None:
        if not self.directory.is_dir():
            return
        for p in self.directory.iterdir():
            if _TMP_RE.match(p.name):
                try:
                    p.unlink()
                    log.info("removed leftover temp file %s", p)
                except OSError:
                    pass

    def _prune(self, keep_path: Path) -> None:
        files = self.checkpoints()
        doomed: Iterable[tuple[int, Path]] = files[: max(len(files) - self.keep, 0)]
        for _, p in doomed:
            if p == keep_path:  # never delete what was just written (an older round)
                continue
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        self._clean_temp()
