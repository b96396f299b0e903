"""Byte layout of a message: versioned msgpack header, msgpack meta, raw little-endian tensors.

Owns how a `Message` becomes ZeroMQ multipart frames and back, the size `Limits`, and
`WireError`. It does not own keys or sockets: the sealed layer takes a symmetric key from its
caller and hands the AEAD work to `crypto` (only `seal`, `open_meta` and `open_tensors` touch
it). Nothing is ever unpickled or eval'd: the only decoder is msgpack with ext types refused.

Two layers, testable apart:
- plaintext: `encode(msg, ...) -> frames` and `decode(frames, limits) -> (Header, Message)`;
- sealed: `seal(msg, ..., key, cipher=...)` encrypts every frame but the header, which is the
  associated data of every part and names the cipher (AES-256-GCM or XChaCha20-Poly1305, see
  `crypto`); the receiver runs `read_header`, `open_meta` (authenticates the header), then
  `open_tensors`, so a transport can check who sent what before decrypting megabytes.

Frames: [header, meta, chunk_1, ..., chunk_n]; each tensor's bytes are cut into chunks of
`header.chunk_bytes` (the last one shorter, none for an empty tensor). The exact layout is in
docs/wire.md. Decoded tensors are fresh, writable, C-contiguous arrays owned by the caller.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import msgpack
import numpy as np

from p2pfl import crypto
from p2pfl.messages import Kind, Message

Buffer = Any  # any object with the buffer protocol: bytes, numpy arrays, zmq.Frame, ...

# 2: the header names the cipher (10th field). 3: same layout; a SECAGG masked input is masked
# with one ChaCha20 stream per (key, round, group) instead of one per 256 KiB chunk
# (p2pfl/masking.py), so a version-2 node's masks would not cancel: refuse it outright.
# 4: the header names the session (11th field) whose key sealed the message (p2pfl/session.py).
WIRE_VERSION = 4
CHUNK_BYTES = 1 << 20  # default chunk: large enough to amortise per-call costs, small enough to stay in cache
MIN_CHUNK_BYTES = 4096
MAX_CHUNK_BYTES = 4 << 20  # bounds one frame, hence the socket's MAXMSGSIZE
MAX_NAME_CHARS = 64
MAX_NDIM = 32
HEADER_FIELDS = 11  # version, kind, sender, recipient, round, counter, chunk_bytes, n_chunks, tensors, cipher, session
SESSION_ID_BYTES = 8  # a session id, or b"" for a handshake message sealed under the static key

# Every dtype on the wire is little-endian; the allowlist is by name, byte order is ours to fix.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float32", "float64", "float16", "int32", "int64", "uint32", "uint8", "int8", "bool")
}

# Reasons: short stable tokens, used as metrics keys by the transport.
TRUNCATED = "truncated"  # header bytes end early
BAD_HEADER = "bad_header"  # header is not msgpack, has the wrong structure or an out-of-range field
BAD_VERSION = "bad_version"
BAD_KIND = "bad_kind"
BAD_DTYPE = "bad_dtype"
BAD_SHAPE = "bad_shape"  # a shape is malformed or a data chunk's length does not match it
BAD_FRAMES = "bad_frames"  # the number of frames does not match the header
BAD_META = "bad_meta"
BAD_VALUE = "bad_value"  # tensor bytes that are not a value of their dtype (bool other than 0/1)
TOO_LARGE = "too_large"
TAMPERED = "tampered"  # authentication failed (sealed layer only)
BAD_CIPHER = "bad_cipher"  # sealed with a known cipher this machine cannot run (sealed layer only)


class WireError(Exception):
    """A message could not be encoded or a frame set is malformed; `reason` is a stable token."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    """What a receiver accepts; checked on decode before any large allocation (and on encode)."""

    max_tensor_elements: int = 1 << 24
    max_tensors: int = 8
    max_meta_bytes: int = 4 << 20
    max_total_bytes: int = 256 << 20
    max_meta_depth: int = 16

    @classmethod
    def for_model(cls, num_params: int) -> Limits:
        """Limits for a model of `num_params` parameters, with 2x headroom.

        The largest message (secure aggregation) is about num_params x 8 bytes + 1 MiB of meta;
        plain gossip sends num_params x 4 bytes.
        """
        if num_params < 0:
            raise ValueError("num_params must be >= 0")
        meta = 4 << 20
        return cls(
            max_tensor_elements=2 * num_params + 1024,
            max_tensors=8,
            max_meta_bytes=meta,
            max_total_bytes=2 * (8 * num_params + (1 << 20)) + meta,
        )

    @property
    def max_header_bytes(self) -> int:
        """A header is small: fixed fields plus a descriptor (name, dtype, shape) per tensor."""
        return 128 + self.max_tensors * (MAX_NAME_CHARS * 4 + 16 + MAX_NDIM * 9 + 8)

    @property
    def max_frame_bytes(self) -> int:
        """The largest single frame a valid sealed message has (the socket's MAXMSGSIZE)."""
        return max(MAX_CHUNK_BYTES, self.max_meta_bytes, self.max_header_bytes) + crypto.TAG_BYTES


@dataclass(frozen=True)
class TensorSpec:
    """Descriptor of one tensor in the header."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class Header:
    """The plaintext header: who, to whom, what, which round, which counter, and the tensor layout."""

    kind: Kind
    sender: int
    recipient: int
    round: int
    counter: int
    chunk_bytes: int
    tensors: tuple[TensorSpec, ...]
    raw: bytes  # the exact bytes on the wire: the associated data of every sealed part
    cipher: str  # a name in crypto.CIPHER_IDS: what sealed the other frames
    session: bytes = b""  # the session whose key sealed the other frames; b"": the static key

    def chunk_lengths(self, spec: TensorSpec) -> list[int]:
        """Lengths of the chunks that carry `spec` (none for an empty tensor)."""
        n = spec.nbytes
        return [min(self.chunk_bytes, n - start) for start in range(0, n, self.chunk_bytes)]

    @property
    def n_chunks(self) -> int:
        return sum(-(-spec.nbytes // self.chunk_bytes) for spec in self.tensors)


# -- encode --------------------------------------------------------------------------------------


def encode(msg: Message, recipient: int, counter: int, limits: Limits,
           chunk_bytes: int = CHUNK_BYTES, cipher: str = crypto.XCHACHA20POLY1305,
           session: bytes = b"") -> list[Buffer]:
    """Plaintext frames of `msg`: [header, meta, data chunks...].

    `cipher` is the name the header carries (what `seal` will encrypt the other frames with),
    `session` the id of the session whose key will (b"": the static pairwise key).
    Chunks are views of the message's arrays when they are already little-endian and
    C-contiguous (no copy); the caller must not modify them until the frames are sent.
    """
    if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must be in [{MIN_CHUNK_BYTES}, {MAX_CHUNK_BYTES}]")
    if cipher not in crypto.CIPHER_IDS:
        raise ValueError(f"unknown cipher {cipher!r}; one of {sorted(crypto.CIPHER_IDS)}")
    _read_session(session)  # the same rule a receiver applies
    kind = _encode_kind(msg.kind)
    fields = {"sender": msg.sender, "recipient": recipient, "round": msg.round}
    ids = {k: _encode_int(v, k, 0, crypto.U32_MAX) for k, v in fields.items()}
    counter = _encode_int(counter, "counter", 1, crypto.U64_MAX)
    meta = _encode_meta(msg.meta, limits)
    if not isinstance(msg.tensors, dict):
        raise WireError(BAD_HEADER, f"tensors must be a dict, got {type(msg.tensors).__name__}")
    if len(msg.tensors) > limits.max_tensors:
        raise WireError(TOO_LARGE, f"{len(msg.tensors)} tensors, limit {limits.max_tensors}")
    specs, data = [], []
    for name, array in msg.tensors.items():
        spec, flat = _encode_tensor(name, array, limits)
        specs.append(spec)
        data.append(flat)
    _check_total(specs, len(meta), limits)
    chunks = [flat[start:start + chunk_bytes] for flat in data for start in range(0, flat.size, chunk_bytes)]
    header = msgpack.packb([
        WIRE_VERSION, kind, ids["sender"], ids["recipient"], ids["round"], counter, chunk_bytes, len(chunks),
        [[s.name, s.dtype, list(s.shape)] for s in specs], crypto.CIPHER_IDS[cipher], session,
    ])
    return [header, meta, *chunks]


def _encode_kind(kind: Any) -> int:
    try:
        return int(Kind(kind))
    except (ValueError, TypeError):
        raise WireError(BAD_KIND, f"unknown kind {kind!r}") from None


def _encode_int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise WireError(BAD_HEADER, f"{what} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise WireError(BAD_HEADER, f"{what} must be an int, got {type(value).__name__}") from None
    if not lo <= value <= hi:
        raise WireError(BAD_HEADER, f"{what}={value} outside [{lo}, {hi}]")
    return value


def _encode_meta(meta: Any, limits: Limits) -> bytes:
    if type(meta) is not dict:
        raise WireError(BAD_META, f"meta must be a dict, got {type(meta).__name__}")
    _check_meta(meta, limits.max_meta_depth)
    try:
        packed = msgpack.packb(meta, use_bin_type=True, strict_types=True)
    except (OverflowError, ValueError, TypeError) as exc:
        raise WireError(BAD_META, str(exc)) from None
    if len(packed) > limits.max_meta_bytes:
        raise WireError(TOO_LARGE, f"meta is {len(packed)} bytes, limit {limits.max_meta_bytes}")
    return packed


def _encode_tensor(name: Any, array: Any, limits: Limits) -> tuple[TensorSpec, np.ndarray]:
    """Descriptor and flat little-endian uint8 view of one tensor (a copy only if needed)."""
    if not isinstance(array, np.ndarray):
        raise WireError(BAD_DTYPE, f"tensor {name!r} is a {type(array).__name__}, not a numpy array")
    dtype = array.dtype.name
    if dtype not in DTYPES or array.dtype.fields is not None:
        raise WireError(BAD_DTYPE, f"tensor {name!r} has dtype {array.dtype}, allowed: {sorted(DTYPES)}")
    spec = TensorSpec(name, dtype, tuple(int(d) for d in array.shape))
    _check_spec(spec, limits)
    # astype/ascontiguousarray return the array itself when it already has the wire layout
    array = np.ascontiguousarray(array.astype(DTYPES[dtype], copy=False))
    return spec, array.reshape(-1).view(np.uint8)


# -- decode --------------------------------------------------------------------------------------


def decode(frames: Sequence[Buffer], limits: Limits) -> tuple[Header, Message]:
    """Header and message from plaintext `frames`; WireError with a reason if anything is off."""
    header = read_header(frames, limits, tag_bytes=0)
    meta = decode_meta(frames[1], limits)

    def fill(part: int, frame: Buffer, out: np.ndarray) -> None:
        out[:] = np.frombuffer(frame, np.uint8)

    return header, to_message(header, meta, _read_tensors(header, frames, fill))


def read_header(frames: Sequence[Buffer], limits: Limits, tag_bytes: int = crypto.TAG_BYTES) -> Header:
    """Decode and check the header in `frames[0]`, and that the other frames fit it.

    `tag_bytes` is what sealing adds to each frame (0 for plaintext frames). Nothing is
    decrypted here: the header is only trusted once `open_meta` has authenticated it.
    """
    if len(frames) == 0:
        raise WireError(TRUNCATED, "no frames")
    raw = bytes(frames[0])
    if len(raw) > limits.max_header_bytes:
        raise WireError(TOO_LARGE, f"header is {len(raw)} bytes, limit {limits.max_header_bytes}")
    fields = _unpack(raw, BAD_HEADER)
    if type(fields) is not list or not fields:
        raise WireError(BAD_HEADER, "header is not a msgpack array")
    if fields[0] != WIRE_VERSION or type(fields[0]) is not int:
        raise WireError(BAD_VERSION, f"version {fields[0]!r}, expected {WIRE_VERSION}")
    if len(fields) != HEADER_FIELDS:
        raise WireError(BAD_HEADER, f"{len(fields)} header fields, expected {HEADER_FIELDS}")
    _, kind, sender, recipient, round_, counter, chunk_bytes, n_chunks, tensors, cipher, session = fields
    try:
        kind = Kind(_header_int(kind, "kind", 0, 255))
    except ValueError:
        raise WireError(BAD_KIND, f"unknown kind {kind}") from None
    header = Header(
        kind=kind,
        sender=_header_int(sender, "sender", 0, crypto.U32_MAX),
        recipient=_header_int(recipient, "recipient", 0, crypto.U32_MAX),
        round=_header_int(round_, "round", 0, crypto.U32_MAX),
        counter=_header_int(counter, "counter", 1, crypto.U64_MAX),
        chunk_bytes=_header_int(chunk_bytes, "chunk_bytes", MIN_CHUNK_BYTES, MAX_CHUNK_BYTES),
        tensors=_read_specs(tensors, limits),
        raw=raw,
        cipher=_read_cipher(cipher),
        session=_read_session(session),
    )
    if n_chunks != header.n_chunks or type(n_chunks) is not int:
        raise WireError(BAD_HEADER, f"n_chunks={n_chunks!r}, the tensors need {header.n_chunks}")
    if len(frames) != 2 + header.n_chunks:
        raise WireError(BAD_FRAMES, f"{len(frames)} frames, header says {2 + header.n_chunks}")
    meta_bytes = _nbytes(frames[1]) - tag_bytes
    if meta_bytes > limits.max_meta_bytes:
        raise WireError(TOO_LARGE, f"meta is {meta_bytes} bytes, limit {limits.max_meta_bytes}")
    _check_total(header.tensors, meta_bytes, limits)
    expected = [n + tag_bytes for spec in header.tensors for n in header.chunk_lengths(spec)]
    for i, (frame, size) in enumerate(zip(frames[2:], expected)):
        if _nbytes(frame) != size:
            raise WireError(BAD_SHAPE, f"chunk {i} is {_nbytes(frame)} bytes, the shapes say {size}")
    return header


def decode_meta(frame: Buffer, limits: Limits) -> dict[str, Any]:
    """The meta dict in plaintext `frame`: msgpack primitives only, within the depth limit."""
    if _nbytes(frame) > limits.max_meta_bytes:
        raise WireError(TOO_LARGE, f"meta is {_nbytes(frame)} bytes, limit {limits.max_meta_bytes}")
    meta = _unpack(frame, BAD_META)
    if type(meta) is not dict:
        raise WireError(BAD_META, f"meta is a {type(meta).__name__}, not a map")
    _check_meta(meta, limits.max_meta_depth)
    return meta


def to_message(header: Header, meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> Message:
    return Message(kind=header.kind, sender=header.sender, round=header.round, meta=meta, tensors=tensors)


def _header_int(value: Any, what: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:  # `type is`: msgpack bools are not ints here
        raise WireError(BAD_HEADER, f"{what}={value!r} is not an int in [{lo}, {hi}]")
    return value


def _read_cipher(value: Any) -> str:
    # An id this version does not define is a malformed header like any other out-of-range field
    # (a new cipher comes with a new WIRE_VERSION); `bad_cipher` is for a known one we cannot run.
    name = crypto.CIPHER_NAMES.get(_header_int(value, "cipher", 0, 255))
    if name is None:
        raise WireError(BAD_HEADER, f"unknown cipher id {value}; this version knows "
                                    + ", ".join(f"{i} ({n})" for i, n in sorted(crypto.CIPHER_NAMES.items())))
    return name


def _read_session(value: Any) -> bytes:
    if type(value) is not bytes or len(value) not in (0, SESSION_ID_BYTES):
        raise WireError(BAD_HEADER, f"session id {value!r} is not msgpack bin of 0 or {SESSION_ID_BYTES} bytes")
    return value


def _read_specs(tensors: Any, limits: Limits) -> tuple[TensorSpec, ...]:
    if type(tensors) is not list:
        raise WireError(BAD_HEADER, "tensor descriptors are not a list")
    if len(tensors) > limits.max_tensors:
        raise WireError(TOO_LARGE, f"{len(tensors)} tensors, limit {limits.max_tensors}")
    specs: list[TensorSpec] = []
    for entry in tensors:
        if type(entry) is not list or len(entry) != 3:
            raise WireError(BAD_HEADER, "a tensor descriptor is not [name, dtype, shape]")
        name, dtype, shape = entry
        if type(dtype) is not str or dtype not in DTYPES:
            raise WireError(BAD_DTYPE, f"dtype {dtype!r} not allowed")
        if type(shape) is not list or not all(type(d) is int for d in shape):
            raise WireError(BAD_SHAPE, f"shape {shape!r} is not a list of ints")
        spec = TensorSpec(name, dtype, tuple(shape))
        _check_spec(spec, limits)
        specs.append(spec)
    if len({s.name for s in specs}) != len(specs):
        raise WireError(BAD_HEADER, "duplicate tensor names")
    return tuple(specs)


def _read_tensors(header: Header, frames: Sequence[Buffer],
                  fill: Callable[[int, Buffer, np.ndarray], None]) -> dict[str, np.ndarray]:
    """Allocate each tensor once and let `fill(part, frame, out)` write each chunk into place."""
    tensors: dict[str, np.ndarray] = {}
    part = 1  # part 0 is the meta; data chunk k is frame k + 1
    for spec in header.tensors:
        flat = np.empty(spec.nbytes, np.uint8)
        start = 0
        for size in header.chunk_lengths(spec):
            fill(part, frames[part + 1], flat[start:start + size])
            start += size
            part += 1
        if spec.dtype == "bool" and flat.size and flat.max() > 1:
            raise WireError(BAD_VALUE, f"tensor {spec.name!r}: bool bytes other than 0 and 1")
        tensors[spec.name] = flat.view(DTYPES[spec.dtype]).reshape(spec.shape)
    return tensors


# -- sealed layer: the one place where wire meets crypto -------------------------------------


def seal(msg: Message, recipient: int, counter: int, key: bytes, limits: Limits,
         chunk_bytes: int = CHUNK_BYTES, cipher: str = crypto.AUTO, session: bytes = b"") -> list[Buffer]:
    """Frames of `msg` for `recipient`, every part after the header sealed with `key`.

    `cipher`: "auto" (AES-256-GCM where this machine has it, else XChaCha20-Poly1305),
    "aes256gcm" or "xchacha20poly1305"; the header names it. `counter` must never repeat for
    this sender (it is in every nonce, and AES-256-GCM's message subkey). `session` is the id
    the header names for `key` (b"" when `key` is the static pairwise key). Part p is the frame
    index - 1: 0 for the meta, 1..n for the data chunks.
    """
    cipher = crypto.choose_cipher(cipher)
    frames = encode(msg, recipient, counter, limits, chunk_bytes, cipher, session)
    header = frames[0]
    fields = (int(msg.sender), int(msg.kind), int(msg.round), int(counter))  # checked by encode
    aead = crypto.MessageAead(cipher, key, *fields)
    # One buffer for every sealed part, each frame a view of it: one allocation per message, which
    # the allocator recycles (a fresh buffer per 1 MiB part is returned to the OS and page-faulted
    # back, which halved sealing speed for multi-chunk messages).
    sizes = [_nbytes(frame) + crypto.TAG_BYTES for frame in frames[1:]]
    out = np.empty(sum(sizes), np.uint8)
    sealed, start = [header], 0
    for part, (frame, size) in enumerate(zip(frames[1:], sizes)):
        sealed.append(aead.seal(part, frame, header, out[start:start + size]))
        start += size
    return sealed


def open_meta(header: Header, frames: Sequence[Buffer], key: bytes | crypto.MessageAead,
              limits: Limits) -> dict[str, Any]:
    """Authenticate the header (it is the meta's associated data) and decode the meta.

    `key` is the pairwise key, or the message's `message_aead` (made once for the meta and the
    tensors). WireError("bad_cipher") if the header names a cipher this machine cannot run, and
    WireError("tampered") if the header or meta were not sealed by the holder of the key.
    """
    return decode_meta(_unseal(_aead(header, key), header, 0, frames[1]), limits)


def open_tensors(header: Header, frames: Sequence[Buffer], key: bytes | crypto.MessageAead) -> dict[str, np.ndarray]:
    """Decrypt every data chunk straight into its tensor (call after `open_meta`)."""
    aead = _aead(header, key)

    def fill(part: int, frame: Buffer, out: np.ndarray) -> None:
        _unseal(aead, header, part, frame, out)

    return _read_tensors(header, frames, fill)


def message_aead(header: Header, key: bytes) -> crypto.MessageAead:
    """What opens the parts of the message `header` describes, sealed under the pairwise `key`."""
    try:
        return crypto.MessageAead(header.cipher, key, header.sender, int(header.kind), header.round, header.counter)
    except crypto.CipherUnavailable:
        raise WireError(BAD_CIPHER, f"sealed with {header.cipher}, which this machine cannot run "
                                    f"(no AES-NI/PCLMUL or ARMv8 crypto); the sender must use "
                                    f"{crypto.XCHACHA20POLY1305}") from None
    except crypto.CryptoError as exc:
        raise WireError(TAMPERED, str(exc)) from None


def _aead(header: Header, key: bytes | crypto.MessageAead) -> crypto.MessageAead:
    return key if isinstance(key, crypto.MessageAead) else message_aead(header, key)


def _unseal(aead: crypto.MessageAead, header: Header, part: int, frame: Buffer,
            out: np.ndarray | None = None) -> Any:
    try:
        return aead.unseal(part, frame, header.raw, out)
    except crypto.CryptoError as exc:
        raise WireError(TAMPERED, f"part {part}: {exc}") from None


# -- shared checks -------------------------------------------------------------------------------


def _unpack(data: Buffer, reason: str) -> Any:
    """One msgpack object filling all of `data`; no ext types, str keys, utf-8 strings."""
    try:  # one call for the common, well-formed case; containers and strings bounded by len(data)
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
    except Exception:  # anything malformed: say why, with the streaming unpacker below
        pass
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, ext_hook=_refuse_ext,
                                max_buffer_size=max(1, _nbytes(data)))
    unpacker.feed(data)
    try:
        obj = unpacker.unpack()
    except msgpack.OutOfData:
        raise WireError(TRUNCATED, "msgpack data ends early") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireError(reason, f"not msgpack: {exc}") from None
    if unpacker.tell() != _nbytes(data):
        raise WireError(reason, "extra bytes after the msgpack object")
    raise WireError(reason, "not msgpack")  # unreachable unless the two unpackers disagree


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} refused")


_META_SCALARS = (int, float, str, bytes, bool, type(None))


def _check_meta(obj: Any, depth: int) -> None:
    """Raise bad_meta unless `obj` is msgpack primitives nested at most `depth` containers deep.

    Exact types: a subclass (an IntEnum, a numpy scalar, a tuple) would not come back as itself.
    """
    kind = type(obj)
    if kind in _META_SCALARS:
        return
    if kind is not list and kind is not dict:
        raise WireError(BAD_META, f"{kind.__name__} is not a msgpack primitive")
    if depth == 0:
        raise WireError(BAD_META, "nested too deep")
    if kind is dict:
        for key, value in obj.items():
            if type(key) is not str:
                raise WireError(BAD_META, f"map key {key!r} is not a str")
            _check_meta(value, depth - 1)
    else:
        for value in obj:
            _check_meta(value, depth - 1)


def _check_spec(spec: TensorSpec, limits: Limits) -> None:
    if type(spec.name) is not str or not 0 < len(spec.name) <= MAX_NAME_CHARS:
        raise WireError(BAD_HEADER, f"tensor name {spec.name!r} must be a str of 1-{MAX_NAME_CHARS} chars")
    if len(spec.shape) > MAX_NDIM or any(d < 0 for d in spec.shape):
        raise WireError(BAD_SHAPE, f"shape {spec.shape} of {spec.name!r}")
    elements = math.prod(spec.shape)
    if elements > limits.max_tensor_elements:
        raise WireError(TOO_LARGE, f"tensor {spec.name!r} has {elements} elements, limit {limits.max_tensor_elements}")


def _check_total(specs: Sequence[TensorSpec], meta_bytes: int, limits: Limits) -> None:
    total = meta_bytes + sum(s.nbytes for s in specs)
    if total > limits.max_total_bytes:
        raise WireError(TOO_LARGE, f"message is {total} bytes, limit {limits.max_total_bytes}")


def _nbytes(buffer: Buffer) -> int:
    return memoryview(buffer).nbytes
