"""Node checkpoints: the on-disk checkpoint format and atomic persistence.

Owns: what a checkpoint file holds and how it is checked when read back (a
safetensors file whose string metadata carries the non-tensor state as JSON
and a SHA-256 of the whole file), writing files atomically (temp file + fsync
+ rename + directory fsync) and privately (0600 files, 0700 directories), and
a directory of rolling checkpoints that falls back to the newest *good* one
after a crash and sets corrupt ones aside.

Must not touch: sockets, messages, training or round logic, the decision of
*when* to checkpoint, and the decision whether a good checkpoint belongs to
this node and model (the node compares ``meta`` with itself and raises
`CheckpointRefused`). No pickle anywhere: nothing here imports it or calls
``torch.load``; tensors are read by safetensors (raw bytes, dtype and shape),
everything else is JSON validated field by field, so a checkpoint can only
ever decode to tensors, numpy arrays and plain Python values.

What a checkpoint holds (`NodeState`, plus the round counter):

- ``trainer``: `LocalTrainer.state_dict()` (model params, optimizer state with
  momentum buffers / Adam moments and step counters, the shuffling generator
  state, rounds) -- any tree of the values below;
- ``reference``: the node's model delta/reference, if any (e.g. a flat float32
  numpy vector), or None;
- ``metrics``: the node's cumulative metrics, a dict of plain values (no tensors);
- ``meta``: a dict of plain values for the caller (node id, num_params, seed...).

Storable values (checked on save, restored with the same Python types):
``None``, ``bool``, ``int`` (-2**63 .. 2**64-1), ``float`` (NaN and infinities
included), ``str``, ``bytes``, ``list``, ``tuple``, ``dict`` with ``str`` or
``int`` keys, dense ``torch.Tensor`` (restored on the CPU, detached, bit-exact,
same dtype and shape, 0-d included) and ``numpy.ndarray`` (same dtype and
shape, native byte order). Plain values must have exactly these types:
subclasses (numpy scalars, IntEnum...) raise TypeError on save. Tensor
subclasses such as ``nn.Parameter`` are stored as their plain data. Tensor
dtypes allowed: see `TORCH_DTYPES` / `NUMPY_DTYPES`.

File format, version 2: a standard safetensors file (readable with
``safetensors.safe_open(path, "pt")``). Every tensor and array of the state is
one safetensors tensor, named by its path in the state (e.g.
``trainer['optimizer']['state'][0]['momentum_buffer']``). The header's
``__metadata__`` has exactly four string fields::

    "format":  "p2pfl-checkpoint"
    "version": "2"
    "state":   compact JSON: {"round": int >= 0, "created": unix time,
                              "writer": {"p2pfl": str, "torch": str, "safetensors": str},
                              "tree": <node>}
    "sha256":  64 lowercase hex digits: SHA-256 of the whole file as written with
               these 64 digits set to "0"

The tree mirrors the state. ``null``, ``true``/``false``, JSON integers,
finite JSON numbers with a fraction or exponent (Python floats) and strings
stand for themselves; everything else is a single-key object whose key is its
tag::

    {"dict":    [[key, node], ...]}     # keys str or int, unique, in order
    {"list":    [node, ...]}
    {"tuple":   [node, ...]}
    {"float":   "nan" | "inf" | "-inf"}
    {"bytes":   "<lowercase hex>"}
    {"tensor":  {"key": name, "dtype": "float32", "shape": [...]}}
    {"ndarray": {"key": name, "dtype": "float32", "shape": [...]}}

The root is a dict of exactly ``trainer``, ``reference``, ``metrics``, ``meta``
in that order; tensors may appear only under the first two.

Reading checks, in order: the header length fits the file, exactly one
``"sha256":"`` field in the header, the SHA-256 (so a flipped byte anywhere,
or any truncation, is always detected, before anything is parsed), the
header JSON and its four metadata fields, the state JSON (strict: no NaN
constants, no duplicate keys) and its keys and types, safetensors' own checks
of the tensor table (dtypes, shapes, offsets covering the data exactly), then
every tree node (tags, key types, duplicate keys, nesting depth, ints --
values and keys -- within -2**63 .. 2**64-1 as on save, dtype allowlist,
the tree's dtype and shape of each tensor against the file's, each tensor
used exactly once, bool bytes 0/1). Any failure raises `CheckpointError`
naming the file (`read_checkpoint`) and the reason. A version-1 file (the
hand-made format before safetensors) is refused as such: rerun with
``--fresh``.

Directory layout (`CheckpointStore`): ``ckpt-{round:08d}.p2c`` files, written
through ``.ckpt-*.tmp-*`` temp files (a crash leaves at most a temp file,
which loading ignores and cleans); a checkpoint found corrupted by
`CheckpointStore.load_latest` is renamed to ``*.p2c.corrupt`` and skipped, so
the newest good one (of the ``keep``, default two, kept) is resumed from.
One writer per directory. A checkpoint is one file so that one rename
commits it: there is no sidecar that a crash could leave out of step.

A checkpoint holds the node's private model, so every file written here (and
by `write_private`, which the simulator uses for its models) is created mode
0600 and a store's directory 0700: never readable by others, not even while
it is being written.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np
import safetensors
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

FORMAT = "p2pfl-checkpoint"
FORMAT_VERSION = 2
LEGACY_MAGIC = b"P2PFLCKP"  # the first 8 bytes of a version-1 file
DIGEST_FIELD = b'"sha256":"'  # as safetensors writes the metadata field (compact JSON)
DIGEST_HEX = 64
PLACEHOLDER = b"0" * DIGEST_HEX
MAX_DEPTH = 64
MAX_NDIM = 32
SUFFIX = ".p2c"
CORRUPT_SUFFIX = ".corrupt"
_NAME_RE = re.compile(r"^ckpt-(\d{8,})\.p2c$")
_TMP_RE = re.compile(r"^\.ckpt-.*\.tmp-[0-9a-f]+$")
_HEX_RE = re.compile(r"(?:[0-9a-f]{2})*")
_METADATA_KEYS = {"format", "version", "state", "sha256"}
_DOCUMENT_KEYS = {"round", "created", "writer", "tree"}
_STATE_KEYS = ("trainer", "reference", "metrics", "meta")
_TENSOR_PARTS = ("trainer", "reference")  # metrics and meta hold plain values only
_LEAF_KEYS = {"key", "dtype", "shape"}
_NON_FINITE = {"nan", "inf", "-inf"}
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
_TORCH_NAMES = {tdt: name for name, tdt in TORCH_DTYPES.items()}

NUMPY_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in ("float16", "float32", "float64", "uint8", "int8", "uint16", "int16",
                 "uint32", "int32", "uint64", "int64", "bool")
}

# The dtype codes of the safetensors tensor table. Unsigned numpy arrays are stored under their
# own codes (U16, U32, U64) and read back through numpy, never through torch: torch < 2.3 has no
# uint16/32/64 tensors, and nothing here needs them.
_TABLE_CODES: dict[str, str] = {
    "float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64",
    "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16",
    "uint32": "U32", "int32": "I32", "uint64": "U64", "int64": "I64", "bool": "BOOL",
}
# How the table's data is read: numpy dtype, little-endian (bfloat16 as its raw 16 bits).
_TABLE_NUMPY: dict[str, np.dtype] = {
    code: np.dtype("int16" if name == "bfloat16" else name).newbyteorder("<")
    for name, code in _TABLE_CODES.items()
}
# safetensors' writer lays tensors out by dtype, widest alignment first (its Dtype enum order,
# descending), then by name; done the same here so files keep the layout they always had.
_TABLE_RANK = {code: i for i, code in enumerate(
    ("BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"))}
CHUNK = 1 << 22  # bytes of tensor data hashed and written at a time

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


class _Encoder:
    """Walks a state tree: tensors go to `self.tensors` (by path), the rest into a JSON tree."""

    def __init__(self) -> None:
        self.tensors: dict[str, tuple[str, list[int], torch.Tensor | np.ndarray]] = {}  # path -> (dtype, shape, value)

    def node(self, value: Any, path: str, depth: int, arrays: bool = True) -> Any:
        if depth > MAX_DEPTH:
            raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels (a cycle?)")
        kind = type(value)
        if kind in _PLAIN:
            return _plain(value, path)
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
        if isinstance(value, torch.Tensor) or kind is np.ndarray:
            if not arrays:
                raise TypeError(f"{path}: tensors and arrays are not allowed here (plain values only)")
            tag = "tensor" if isinstance(value, torch.Tensor) else "ndarray"
            name, data = _tensor(value, path) if tag == "tensor" else _ndarray(value, path)
            return {tag: self._add(path, name, data)}
        raise TypeError(f"{path}: cannot store a value of type {kind.__module__}.{kind.__qualname__}")

    def _add(self, path: str, dtype_name: str, data: torch.Tensor | np.ndarray) -> dict[str, Any]:
        # A path is a chain of repr()s, so distinct leaves never share one; checked all the same,
        # because a collision would silently drop a tensor.
        if path in self.tensors:
            raise ValueError(f"{path}: two tensors would be stored under the same name")
        shape = [int(d) for d in data.shape]
        self.tensors[path] = (dtype_name, shape, data)
        return {"key": path, "dtype": dtype_name, "shape": shape}


def _plain(value: Any, path: str) -> Any:
    """A plain leaf as JSON: itself, or a tagged object for what JSON lacks (bytes, NaN, inf)."""
    if type(value) is int and not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(f"{path}: int {value} does not fit in 64 bits")
    if type(value) is float and not math.isfinite(value):
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if type(value) is bytes:
        return {"bytes": value.hex()}
    return value


def _tensor(t: torch.Tensor, path: str) -> tuple[str, torch.Tensor]:
    """(dtype name, `t` detached): checked now, its bytes taken only while the file is written."""
    if t.layout != torch.strided:
        raise TypeError(f"{path}: only dense tensors are storable, got layout {t.layout}")
    name = _TORCH_NAMES.get(t.dtype)
    if name is None or t.is_quantized:
        raise TypeError(f"{path}: tensor dtype {t.dtype} is not storable")
    return name, t.detach()


def _ndarray(arr: np.ndarray, path: str) -> tuple[str, np.ndarray]:
    """(dtype name, `arr`): checked now, its bytes taken only while the file is written."""
    name = arr.dtype.name
    if name not in NUMPY_DTYPES or arr.dtype.fields is not None:
        raise TypeError(f"{path}: numpy dtype {arr.dtype} is not storable")
    return name, arr


def _raw(value: torch.Tensor | np.ndarray, dtype_name: str) -> memoryview:
    """The bytes of one stored tensor or array as safetensors holds them (C order, little-endian).

    A view of the value's own memory where it already is dense, on the CPU and native order
    (the common case: no copy); otherwise a copy of this one value only.
    """
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        t = t.contiguous().reshape(-1)
        arr = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
    else:
        arr = np.asarray(value, dtype=NUMPY_DTYPES[dtype_name], order="C").reshape(-1)
    if sys.byteorder == "big":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return memoryview(np.ascontiguousarray(arr).view(np.uint8))


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("p2pfl")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


def _check_state(round: int, state: NodeState) -> None:
    if type(round) is not int or round < 0:
        raise ValueError(f"round must be a non-negative int, got {round!r}")
    if not isinstance(state, NodeState):
        raise TypeError(f"state must be a NodeState, got {type(state).__name__}")
    for name in ("metrics", "meta"):
        if type(getattr(state, name)) is not dict:
            raise TypeError(f"state.{name} must be a dict, got {type(getattr(state, name)).__name__}")


class _Encoded:
    """A checkpoint ready to write: the safetensors header (digest still "0"s) and the tensors in file order.

    The file is a standard safetensors file laid out as safetensors' own writer lays it out
    (8-byte little-endian header length, compact JSON header padded with spaces to a multiple
    of 8, tensors sorted by dtype alignment then name, back to back). It is written here
    rather than by ``safetensors.torch.save`` so that the tensors' bytes are streamed from
    their own memory instead of being copied whole (three copies of the model, before).
    """

    def __init__(self, round: int, state: NodeState) -> None:
        _check_state(round, state)
        enc = _Encoder()
        tree = {"dict": [[name, enc.node(getattr(state, name), name, 1, arrays=name in _TENSOR_PARTS)]
                         for name in _STATE_KEYS]}
        document = {
            "round": round,
            "created": time.time(),
            "writer": {"p2pfl": _package_version(), "torch": str(torch.__version__),
                       "safetensors": safetensors.__version__},
            "tree": tree,
        }
        metadata = {
            "format": FORMAT,
            "version": str(FORMAT_VERSION),
            # ASCII: escapes what UTF-8 cannot carry (lone surrogates), so any Python str round-trips.
            "state": json.dumps(document, ensure_ascii=True, allow_nan=False, separators=(",", ":")),
            "sha256": PLACEHOLDER.decode(),
        }
        order = sorted(enc.tensors.items(),
                       key=lambda kv: (-_TABLE_RANK[_TABLE_CODES[kv[1][0]]], kv[0].encode("utf-8")))
        header: dict[str, Any] = {"__metadata__": metadata}
        self.values: list[tuple[str, int, torch.Tensor | np.ndarray]] = []  # (dtype, nbytes, value)
        offset = 0
        for name, (dtype_name, shape, value) in order:
            nbytes = math.prod(shape) * _TABLE_NUMPY[_TABLE_CODES[dtype_name]].itemsize
            header[name] = {"dtype": _TABLE_CODES[dtype_name], "shape": shape,
                            "data_offsets": [offset, offset + nbytes]}
            self.values.append((dtype_name, nbytes, value))
            offset += nbytes
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)
        self.header = len(text).to_bytes(8, "little") + text
        self.digest_at = _digest_at(self.header, len(self.header))

    def chunks(self) -> Iterator[bytes]:
        """The tensor data, in pieces of at most `CHUNK` bytes.

        Each piece is a copy, so what is hashed is exactly what is written even if a tensor
        changes meanwhile (the file would then hold a mix, like any unsynchronized read).
        """
        for dtype_name, nbytes, value in self.values:
            raw = _raw(value, dtype_name)
            if raw.nbytes != nbytes:
                raise ValueError(f"a tensor changed size while the checkpoint was written ({raw.nbytes} != {nbytes})")
            for i in range(0, nbytes, CHUNK):
                yield bytes(raw[i : i + CHUNK])
            del raw

    def write_to(self, f: BinaryIO) -> None:
        """Write the file to `f` (at its start, seekable): header, data, then the digest in place."""
        h = hashlib.sha256(self.header)
        f.write(self.header)
        for chunk in self.chunks():
            h.update(chunk)
            f.write(chunk)
        f.seek(self.digest_at)
        f.write(h.hexdigest().encode())
        f.seek(0, io.SEEK_END)


def encode(round: int, state: NodeState) -> bytes:
    """The checkpoint file's bytes for `state` at `round`.

    Raises TypeError / ValueError if `state` holds something that cannot be stored.
    """
    buf = io.BytesIO()
    _Encoded(round, state).write_to(buf)
    return buf.getvalue()


# ----------------------------------------------------------------------------- decoding


def _header_end(buf: bytes | bytearray) -> int:
    """Offset where safetensors' JSON header ends (8-byte little-endian length, then the JSON)."""
    size = len(buf)
    if buf[: len(LEGACY_MAGIC)] == LEGACY_MAGIC:
        raise CheckpointError(
            f"unsupported checkpoint format version 1 (this reader knows {FORMAT_VERSION}, safetensors): "
            "rerun with --fresh to discard it")
    if size < 8:
        raise CheckpointError(f"truncated: {size} bytes is shorter than any checkpoint")
    length = int.from_bytes(buf[:8], "little")
    if length > size - 8:
        raise CheckpointError(
            f"truncated, or not a p2pfl checkpoint (not safetensors): a header of {length} bytes "
            f"does not fit in the file's {size}")
    return 8 + length


def _digest_at(buf: bytes | bytearray, header_end: int) -> int:
    """Offset of the 64 hex digits of the header's one ``"sha256":"`` field.

    Inside the JSON-in-a-string ``state`` field every quote is escaped, so this exact byte
    sequence can only be the metadata field itself.
    """
    at = buf.find(DIGEST_FIELD, 8, header_end)
    if at < 0 or buf.find(DIGEST_FIELD, at + 1, header_end) >= 0:
        raise CheckpointError("corrupted, or not a p2pfl checkpoint: the header has no single sha256 field")
    start = at + len(DIGEST_FIELD)
    if not re.fullmatch(rb"[0-9a-f]{64}\"", bytes(buf[start : start + DIGEST_HEX + 1])):
        raise CheckpointError("corrupted: the sha256 field is not 64 lowercase hex digits")
    return start


def _verify_digest(buf: bytes, header_end: int) -> None:
    """Check the whole-file SHA-256 before anything is parsed (hashed in place, nothing copied)."""
    start = _digest_at(buf, header_end)
    stored = buf[start : start + DIGEST_HEX]
    with memoryview(buf) as view:
        h = hashlib.sha256(view[:start])
        h.update(PLACEHOLDER)
        h.update(view[start + DIGEST_HEX :])
    if h.hexdigest().encode() != stored:
        raise CheckpointError("checksum mismatch: the file is corrupted (its SHA-256 differs from the one it records)")


def _strict_json(text: str | bytes, what: str) -> Any:
    """json.loads without NaN/Infinity constants or duplicate keys; CheckpointError on anything wrong."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"duplicate key {k!r}")
            out[k] = v
        return out

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"bad {what}: not valid JSON ({exc})") from None


def _metadata(buf: bytes, header_end: int) -> dict[str, str]:
    """The header's ``__metadata__``, checked: exactly our four string fields, our format and version."""
    header = _strict_json(buf[8:header_end], "header")
    meta = header.get("__metadata__") if type(header) is dict else None
    if type(meta) is not dict or set(meta) != _METADATA_KEYS or any(type(v) is not str for v in meta.values()):
        got = sorted(meta) if type(meta) is dict else type(meta).__name__
        raise CheckpointError(f"not a p2pfl checkpoint: metadata must be strings {sorted(_METADATA_KEYS)}, got {got}")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"not a p2pfl checkpoint (format {meta['format']!r})")
    if meta["version"] != str(FORMAT_VERSION):
        raise CheckpointError(
            f"unsupported checkpoint format version {meta['version']} (this reader knows {FORMAT_VERSION})")
    return meta


def _document(text: str) -> tuple[int, list[Any]]:
    """(round, root pairs) from the ``state`` field, every field's type checked."""
    doc = _strict_json(text, "state")
    if type(doc) is not dict or set(doc) != _DOCUMENT_KEYS:
        keys = sorted(doc) if type(doc) is dict else type(doc).__name__
        raise CheckpointError(f"bad state: expected keys {sorted(_DOCUMENT_KEYS)}, got {keys}")
    round_, writer, tree = doc["round"], doc["writer"], doc["tree"]
    if type(round_) is not int or round_ < 0:
        raise CheckpointError(f"bad state: round {round_!r} is not a non-negative int")
    if type(doc["created"]) not in (int, float):
        raise CheckpointError("bad state: created is not a number")
    if type(writer) is not dict or any(type(v) is not str for v in writer.values()):
        raise CheckpointError("bad state: writer must map str to str")
    pairs = tree.get("dict") if type(tree) is dict and len(tree) == 1 else None
    if (type(pairs) is not list
            or [p[0] if type(p) is list and len(p) == 2 else None for p in pairs] != list(_STATE_KEYS)):
        raise CheckpointError(f"bad structure: the tree root must be a dict of {list(_STATE_KEYS)}")
    return round_, pairs


def _load_tensors(buf: bytes) -> dict[str, dict[str, Any]]:
    """The tensor table as safetensors reads it: name -> {"dtype": code, "shape": [...], "data": bytes}.

    Raw bytes, not torch tensors: the dtypes are mapped here (`_Decoder._array`), through numpy,
    so that unsigned arrays load on any torch.
    """
    try:
        return dict(safetensors.deserialize(buf))
    except Exception as exc:  # SafetensorError
        raise CheckpointError(f"bad tensor data: safetensors cannot read it ({type(exc).__name__}: {exc})") from None


def _int_ok(n: int, what: str) -> int:
    if not _INT_MIN <= n <= _INT_MAX:
        raise CheckpointError(
            f"bad structure: {what} is an int of {n.bit_length()} bits, outside -2**63..2**64-1 "
            "(no checkpoint writer stores it)")
    return n


class _Decoder:
    """Rebuilds the state from the JSON tree and the tensors safetensors read."""

    def __init__(self, tensors: dict[str, dict[str, Any]]) -> None:
        self.tensors = tensors
        self.used: set[str] = set()

    def node(self, n: Any, path: str, depth: int, arrays: bool = True) -> Any:
        if depth > MAX_DEPTH:
            raise CheckpointError(f"bad structure: {path} nested deeper than {MAX_DEPTH} levels")
        if type(n) is int:
            return _int_ok(n, path)
        if n is None or type(n) in (bool, float, str):
            return n
        if type(n) is not dict or len(n) != 1:
            raise CheckpointError(f"bad structure: {path} is a {type(n).__name__}, not a tagged node")
        ((tag, body),) = n.items()
        if tag == "dict":
            return self._dict(body, path, depth, arrays)
        if tag in ("list", "tuple"):
            if type(body) is not list:
                raise CheckpointError(f"bad structure: {path} {tag} body is not a list")
            items = [self.node(v, f"{path}[{i}]", depth + 1, arrays) for i, v in enumerate(body)]
            return items if tag == "list" else tuple(items)
        if tag == "float":
            if type(body) is not str or body not in _NON_FINITE:
                raise CheckpointError(f"bad structure: {path} has a bad float body {body!r} (nan, inf or -inf)")
            return float(body)
        if tag == "bytes":
            if type(body) is not str or not _HEX_RE.fullmatch(body):
                raise CheckpointError(f"bad structure: {path} has a bad bytes body (not lowercase hex)")
            return bytes.fromhex(body)
        if tag in ("tensor", "ndarray"):
            if not arrays:
                raise CheckpointError(f"bad structure: {path} holds a {tag} where plain values belong")
            return self._array(body, path, tag)
        raise CheckpointError(f"bad structure: {path} has unknown tag {tag!r}")

    def _dict(self, body: Any, path: str, depth: int, arrays: bool) -> dict[Any, Any]:
        if type(body) is not list:
            raise CheckpointError(f"bad structure: {path} dict body is not a list of pairs")
        out: dict[Any, Any] = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise CheckpointError(f"bad structure: {path} has a dict entry that is not a pair")
            k, v = pair
            if type(k) not in (str, int):
                raise CheckpointError(f"bad structure: {path} has a {type(k).__name__} dict key")
            if type(k) is int:
                _int_ok(k, f"a dict key of {path}")
            if k in out:
                raise CheckpointError(f"bad structure: {path} has duplicate key {k!r}")
            out[k] = self.node(v, f"{path}[{k!r}]", depth + 1, arrays)
        return out

    def _array(self, leaf: Any, path: str, tag: str) -> torch.Tensor | np.ndarray:
        if type(leaf) is not dict or set(leaf) != _LEAF_KEYS:
            raise CheckpointError(f"bad structure: {path} {tag} leaf must have exactly {sorted(_LEAF_KEYS)}")
        key, name, shape = leaf["key"], leaf["dtype"], leaf["shape"]
        table: dict[str, Any] = TORCH_DTYPES if tag == "tensor" else NUMPY_DTYPES
        if type(name) is not str or name not in table:
            raise CheckpointError(f"bad structure: {path} has disallowed dtype {name!r}")
        if type(shape) is not list or len(shape) > MAX_NDIM or any(type(d) is not int or d < 0 for d in shape):
            raise CheckpointError(f"bad structure: {path} has invalid shape {shape!r}")
        if type(key) is not str or key not in self.tensors:
            raise CheckpointError(f"bad structure: {path} names tensor {key!r}, which the file does not hold")
        if key in self.used:
            raise CheckpointError(f"bad structure: tensor {key!r} is used twice")
        self.used.add(key)
        entry = self.tensors[key]
        code, got_shape, data = entry["dtype"], list(entry["shape"]), entry["data"]
        entry["data"] = None  # each tensor's bytes are held once: by the array made from them
        if code != _TABLE_CODES[name] or got_shape != shape:
            raise CheckpointError(
                f"bad structure: {path} is {name}{shape} in the state, {code}{got_shape} in the tensor table")
        if type(data) is not bytearray:  # safetensors < 0.6 hands out (read-only) bytes
            data = bytearray(data)
        arr = np.frombuffer(data, dtype=np.uint8)
        if name == "bool" and arr.size and int(arr.max()) > 1:
            raise CheckpointError(f"bad structure: {path} bool data holds bytes other than 0/1")
        arr = arr.view(_TABLE_NUMPY[code]).reshape(shape)
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if tag == "ndarray":
            return arr
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if name == "bfloat16" else t

    def check_all_used(self) -> None:
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            raise CheckpointError(f"bad structure: the file holds tensors the state does not name: {unused[:3]}")


def decode(data: bytes | bytearray | memoryview) -> tuple[int, NodeState]:
    """Parse and fully validate a checkpoint file's bytes; return (round, state).

    Raises CheckpointError with the reason on anything wrong.
    """
    buf = bytes(data)  # no copy when `data` is bytes already
    header_end = _header_end(buf)
    _verify_digest(buf, header_end)
    round_, pairs = _document(_metadata(buf, header_end)["state"])
    dec = _Decoder(_load_tensors(buf))
    parts = {key: dec.node(node, key, 1, arrays=key in _TENSOR_PARTS) for key, node in pairs}
    dec.check_all_used()
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


def write_private(path: str | os.PathLike[str], chunks: Iterable[bytes | bytearray | memoryview]) -> Path:
    """Write `chunks` (any bytes-like buffers) to `path` atomically, readable and writable by the owner only (0600).

    Temp file created 0600 (os.open, so no moment with wider permissions), fsync, rename,
    fsync directory: either the old file (or none) or the complete new one is at `path`,
    even after a crash.
    """

    def write(f: BinaryIO) -> None:
        for c in chunks:
            f.write(c)

    return _write_private_with(path, write)


def _write_private_with(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """`write_private`, the content written by `write(f)` (f: a seekable binary file at offset 0)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            write(f)
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
    """Write a checkpoint to `path` atomically and privately (see `write_private`).

    Streams the tensors' bytes from their own memory: beyond the header, saving needs only
    `CHUNK` bytes (and a copy of any tensor that is not dense on the CPU).
    """
    encoded = _Encoded(round, state)  # refuses an unstorable state before any file is made
    return _write_private_with(path, encoded.write_to)


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
