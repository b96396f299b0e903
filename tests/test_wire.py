"""wire: round trips (plaintext and sealed) and one typed error for every kind of malformed frame."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pfl import crypto, wire
from p2pfl.messages import Kind, Message
from p2pfl.wire import Limits, WireError

LIMITS = Limits.for_model(200_000)
KEY = bytes(range(32))
CHUNK = wire.MIN_CHUNK_BYTES  # small chunks so modest tensors span several
needs_aes = pytest.mark.skipif(not crypto.aes256gcm_available(), reason="no AES-256-GCM on this CPU")
CIPHERS = [crypto.XCHACHA20POLY1305, pytest.param(crypto.AES256GCM, marks=needs_aes)]
AVAILABLE = [c for c in crypto.CIPHER_IDS if crypto.cipher_available(c)]


def _msg(**changes) -> Message:
    fields = dict(kind=Kind.MODEL, sender=2, round=5, meta={"samples": 10},
                  tensors={"delta": np.arange(3000, dtype=np.float32)})
    return Message(**{**fields, **changes})


def _frames(msg: Message | None = None, chunk: int = CHUNK) -> list[bytes]:
    return [bytes(f) for f in wire.encode(msg or _msg(), 4, 99, LIMITS, chunk)]


def _with_header(frames: list[bytes], index: int, value) -> list[bytes]:
    fields = msgpack.unpackb(frames[0])
    fields[index] = value
    return [msgpack.packb(fields), *frames[1:]]


def _reason(frames, limits: Limits = LIMITS) -> str:
    with pytest.raises(WireError) as info:
        wire.decode(frames, limits)
    return info.value.reason


def _assert_same(got: Message, sent: Message) -> None:
    assert (got.kind, got.sender, got.round) == (sent.kind, sent.sender, sent.round)
    assert got.meta == sent.meta
    assert list(got.tensors) == list(sent.tensors)
    for name, array in sent.tensors.items():
        out = got.tensors[name]
        assert out.dtype == array.dtype.newbyteorder("<") and out.shape == array.shape
        np.testing.assert_array_equal(out, array)


# -- round trips -----------------------------------------------------------------------------

meta_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
tensors = st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.sampled_from(sorted(wire.DTYPES)).flatmap(
        lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40))),
    max_size=4,
)
messages = st.builds(
    Message, kind=st.sampled_from(list(Kind)), sender=st.integers(0, 2**32 - 1),
    round=st.integers(0, 2**32 - 1), meta=st.dictionaries(st.text(max_size=8), meta_values, max_size=5),
    tensors=tensors,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages, recipient=st.integers(0, 2**32 - 1), counter=st.integers(1, 2**64 - 1))
def test_plaintext_round_trip(msg, recipient, counter):
    header, got = wire.decode(wire.encode(msg, recipient, counter, LIMITS, CHUNK), LIMITS)
    assert (header.recipient, header.counter) == (recipient, counter)
    _assert_same(got, msg)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages, counter=st.integers(1, 2**64 - 1), cipher=st.sampled_from(AVAILABLE))
def test_sealed_round_trip(msg, counter, cipher):
    frames = [bytes(f) for f in wire.seal(msg, 9, counter, KEY, LIMITS, CHUNK, cipher)]
    header = wire.read_header(frames, LIMITS)
    assert header.cipher == cipher
    meta = wire.open_meta(header, frames, KEY, LIMITS)
    _assert_same(wire.to_message(header, meta, wire.open_tensors(header, frames, KEY)), msg)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_large_tensor_spans_chunks_and_stays_intact(cipher):
    data = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
    limits = Limits.for_model(data.size)
    frames = wire.seal(_msg(tensors={"delta": data}), 4, 1, KEY, limits, cipher=cipher)  # default 1 MiB chunks
    assert len(frames) == 2 + math.ceil(data.nbytes / wire.CHUNK_BYTES)
    header = wire.read_header(frames, limits)
    assert header.cipher == cipher
    wire.open_meta(header, frames, KEY, limits)
    out = wire.open_tensors(header, frames, KEY)["delta"]
    assert np.array_equal(out, data) and out.flags.writeable and out.flags.c_contiguous
    overhead = sum(memoryview(f).nbytes for f in frames) - data.nbytes
    assert overhead / data.nbytes < 0.001


def test_big_endian_and_non_contiguous_arrays_go_out_little_endian():
    base = np.arange(24, dtype=">f8").reshape(4, 6)
    msg = _msg(tensors={"be": base, "strided": base[:, ::2], "fortran": np.asfortranarray(base)})
    _, got = wire.decode(_frames(msg), LIMITS)
    for name, array in msg.tensors.items():
        assert got.tensors[name].dtype == np.dtype("<f8")
        assert np.array_equal(got.tensors[name], array)


def test_encoding_does_not_copy_a_contiguous_little_endian_tensor():
    data = np.arange(100, dtype=np.float32)
    frames = wire.encode(_msg(tensors={"d": data}), 4, 1, LIMITS)
    assert np.shares_memory(frames[2], data)


# -- malformed frames: one reason each -------------------------------------------------------


def test_truncated_header():
    frames = _frames()
    assert _reason([frames[0][:-3], *frames[1:]]) == "truncated"
    assert _reason([]) == "truncated"


@pytest.mark.parametrize("garbage", [b"hello world", b"\xc1\xc1\xc1", bytes(range(256)), b"\x01"])
def test_garbage_header(garbage):
    assert _reason([garbage, b"\x80"]) == "bad_header"


def test_bad_version():
    assert wire.WIRE_VERSION == 4 and msgpack.unpackb(_frames()[0])[0] == 4
    # 1: no cipher field; 2: per-chunk mask seeds; 3: no session field (sealed under the static key)
    for version in (1, 2, 3, 5, True):
        assert _reason(_with_header(_frames(), 0, version)) == "bad_version"
    v1 = msgpack.unpackb(_frames()[0])[:9]  # a genuine version-1 header: 9 fields, no cipher
    v1[0] = 1
    assert _reason([msgpack.packb(v1), *_frames()[1:]]) == "bad_version"
    v3 = msgpack.unpackb(_frames()[0])[:10]  # a genuine version-3 header: 10 fields, no session
    v3[0] = 3
    assert _reason([msgpack.packb(v3), *_frames()[1:]]) == "bad_version"
    v3[0] = 4
    assert _reason([msgpack.packb(v3), *_frames()[1:]]) == "bad_header"  # version 4 needs its 11 fields


@pytest.mark.parametrize("value", [b"\x00" * 7, b"\x00" * 9, "12345678", 0, None, [1]])
def test_bad_session_id(value):
    # a session id is msgpack bin of 0 (static key: handshake) or 8 bytes, nothing else
    assert _reason(_with_header(_frames(), 10, value)) == "bad_header"


def test_session_id_round_trips_and_is_authenticated():
    sid = bytes(range(8))
    frames = [bytes(f) for f in wire.seal(_msg(), 4, 99, KEY, LIMITS, CHUNK, session=sid)]
    header = wire.read_header(frames, LIMITS)
    assert header.session == sid
    wire.open_meta(header, frames, KEY, LIMITS)
    forged = _with_header(frames, 10, bytes(8))  # same key, another session named: the header is the AAD
    with pytest.raises(WireError) as info:
        wire.open_meta(wire.read_header(forged, LIMITS), forged, KEY, LIMITS)
    assert info.value.reason == "tampered"


@pytest.mark.parametrize("value", [0, 3, 255, 256, -1, "aes256gcm", True, None, 2.0])
def test_unknown_cipher_id(value):
    # an id this version does not define is a malformed header (a new cipher is a new version)
    with pytest.raises(WireError, match="cipher") as info:
        wire.decode(_with_header(_frames(), 9, value), LIMITS)
    assert info.value.reason == "bad_header"
    with pytest.raises(WireError) as info:
        wire.read_header(_with_header(_sealed(), 9, value), LIMITS)
    assert info.value.reason == "bad_header"


def test_header_names_the_cipher():
    for name, ident in crypto.CIPHER_IDS.items():
        frames = [bytes(f) for f in wire.encode(_msg(), 4, 99, LIMITS, CHUNK, cipher=name)]
        assert msgpack.unpackb(frames[0])[9] == ident
        assert wire.decode(frames, LIMITS)[0].cipher == name
    with pytest.raises(ValueError, match="unknown cipher"):
        wire.encode(_msg(), 4, 99, LIMITS, CHUNK, cipher="rot13")


def test_unknown_kind():
    assert _reason(_with_header(_frames(), 1, 99)) == "bad_kind"
    with pytest.raises(WireError) as info:
        wire.encode(_msg(kind=42), 4, 1, LIMITS)
    assert info.value.reason == "bad_kind"


@pytest.mark.parametrize("index,value", [(2, -1), (3, 2**32), (4, "7"), (5, 0), (5, True), (6, 100), (7, 5), (9, 7)])
def test_header_field_out_of_range(index, value):
    # sender, recipient, round, counter (>= 1, no bools), chunk size, chunk count, cipher id
    assert _reason(_with_header(_frames(), index, value)) == "bad_header"


def test_bad_dtype():
    frames = _frames()
    for dtype in ("complex128", "object", "<f4", ["float32"]):
        assert _reason(_with_header(frames, 8, [["delta", dtype, [3000]]])) == "bad_dtype"
    with pytest.raises(WireError) as info:
        wire.encode(_msg(tensors={"c": np.zeros(3, np.complex64)}), 4, 1, LIMITS)
    assert info.value.reason == "bad_dtype"


def test_shape_bytes_mismatch():
    frames = _frames(_msg(tensors={"delta": np.zeros(1000, np.float32)}))
    assert _reason(_with_header(frames, 8, [["delta", "float32", [999]]])) == "bad_shape"
    assert _reason(_with_header(frames, 8, [["delta", "float32", [-1000]]])) == "bad_shape"
    assert _reason(_with_header(frames, 8, [["delta", "float32", "1000"]])) == "bad_shape"
    assert _reason([*frames[:2], frames[2][:-1]]) == "bad_shape"


def test_too_many_tensors():
    limits = Limits(max_tensors=2)
    many = _msg(tensors={f"t{i}": np.zeros(1, np.int8) for i in range(3)})
    assert _reason(_frames(many), limits) == "too_large"
    with pytest.raises(WireError) as info:
        wire.encode(many, 4, 1, limits)
    assert info.value.reason == "too_large"


def test_oversized_tensor_refused_from_the_header_alone():
    limits = Limits(max_tensor_elements=1000)
    huge = [["delta", "float32", [10**12]]]  # 4 TB claimed: must not be allocated
    assert _reason(_with_header(_frames(), 8, huge), limits) == "too_large"
    assert _reason(_frames(_msg(tensors={"d": np.zeros(1001, np.int8)})), limits) == "too_large"
    total = Limits(max_total_bytes=1000)
    assert _reason(_frames(_msg(tensors={"d": np.zeros(1001, np.int8)})), total) == "too_large"


def test_oversized_header_or_meta():
    limits = Limits(max_meta_bytes=100)
    frames = _frames()
    assert _reason([frames[0] + b"\x00" * limits.max_header_bytes, *frames[1:]], limits) == "too_large"
    assert _reason([frames[0], msgpack.packb({"x": b"y" * 200}), *frames[2:]], limits) == "too_large"
    with pytest.raises(WireError) as info:
        wire.encode(_msg(meta={"x": b"y" * 200}), 4, 1, limits)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("meta", [
    msgpack.packb({"x": msgpack.ExtType(5, b"abc")}),
    msgpack.packb({"t": msgpack.Timestamp(1)}, datetime=False),
    msgpack.packb({1: "int key"}),
    msgpack.packb(["not", "a", "map"]),
    msgpack.packb({"x": b"\xff"}, use_bin_type=False),  # raw str that is not utf-8
    b"\x81\xa1x" + b"\x91" * 40 + b"\xc0",  # nested 40 deep
    b"\x80\x01",  # extra bytes
])
def test_bad_meta(meta):
    frames = _frames()
    assert _reason([frames[0], meta, *frames[2:]]) == "bad_meta"


@pytest.mark.parametrize("meta", [
    {"x": np.float32(1)}, {"x": (1, 2)}, {"x": {1, 2}}, {1: "int key"}, {"x": Kind.MODEL},
    {"x": 2**64}, {"x": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}, ["not a dict"],
])
def test_non_primitive_meta_refused_on_encode(meta):
    with pytest.raises(WireError) as info:
        wire.encode(_msg(meta=meta), 4, 1, LIMITS)
    assert info.value.reason == "bad_meta"


def test_wrong_frame_count():
    frames = _frames()
    assert len(frames) > 3
    assert _reason(frames[:-1]) == "bad_frames"
    assert _reason([*frames, b"extra"]) == "bad_frames"
    assert _reason(frames[:1]) == "bad_frames"


def test_duplicate_or_bad_tensor_names():
    frames = _frames(_msg(tensors={"a": np.zeros(1, np.int8), "b": np.zeros(1, np.int8)}))
    assert _reason(_with_header(frames, 8, [["a", "int8", [1]], ["a", "int8", [1]]])) == "bad_header"
    assert _reason(_with_header(frames, 8, [["a", "int8", [1]], [7, "int8", [1]]])) == "bad_header"
    assert _reason(_with_header(frames, 8, [["a", "int8", [1]], ["", "int8", [1]]])) == "bad_header"


def test_bool_bytes_other_than_0_and_1():
    frames = _frames(_msg(tensors={"m": np.array([True, False])}))
    assert _reason([*frames[:2], b"\x01\x02"]) == "bad_value"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_arbitrary_bytes_only_ever_raise_wire_error(frames):
    try:
        wire.decode(frames, LIMITS)
    except WireError as exc:
        assert exc.reason in {"truncated", "bad_header", "bad_version", "bad_kind", "bad_dtype", "bad_shape",
                              "bad_frames", "bad_meta", "bad_value", "too_large"}


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_single_byte_flip_in_a_valid_frame_set_only_raises_wire_error(data):
    frames = [bytearray(f) for f in _frames(_msg(tensors={"d": np.arange(10, dtype=np.int32)}))]
    i = data.draw(st.integers(0, len(frames) - 1))
    j = data.draw(st.integers(0, len(frames[i]) - 1))
    frames[i][j] ^= data.draw(st.integers(1, 255))
    try:
        wire.decode([bytes(f) for f in frames], LIMITS)
    except WireError:
        pass


# -- sealed layer (every test for both ciphers) -------------------------------------------------


@pytest.fixture(params=CIPHERS)
def cipher(request):
    return request.param


def _sealed(cipher: str = crypto.XCHACHA20POLY1305) -> list[bytes]:
    return [bytes(f) for f in wire.seal(_msg(), 4, 99, KEY, LIMITS, CHUNK, cipher)]


def _open(frames, key=KEY) -> Message:
    header = wire.read_header(frames, LIMITS)
    meta = wire.open_meta(header, frames, key, LIMITS)
    return wire.to_message(header, meta, wire.open_tensors(header, frames, key))


def test_sealed_parts_are_not_plaintext(cipher):
    frames = _sealed(cipher)
    assert np.arange(3000, dtype=np.float32).tobytes()[:CHUNK] not in frames[2]
    assert wire.read_header(frames, LIMITS).cipher == cipher


def test_auto_seals_with_aes_gcm_where_available(monkeypatch):
    assert wire.read_header(wire.seal(_msg(), 4, 1, KEY, LIMITS), LIMITS).cipher == crypto.choose_cipher("auto")
    monkeypatch.setattr(crypto, "aes256gcm_available", lambda: False)
    assert wire.read_header(wire.seal(_msg(), 4, 1, KEY, LIMITS), LIMITS).cipher == crypto.XCHACHA20POLY1305


@needs_aes
def test_aes_frames_to_a_machine_without_aes_are_bad_cipher(monkeypatch):
    frames = _sealed(crypto.AES256GCM)
    monkeypatch.setattr(crypto, "aes256gcm_available", lambda: False)  # the receiver has no AES-NI
    header = wire.read_header(frames, LIMITS)  # parsing does not need the cipher
    with pytest.raises(WireError, match="xchacha20poly1305") as info:
        wire.open_meta(header, frames, KEY, LIMITS)
    assert info.value.reason == "bad_cipher"
    with pytest.raises(WireError) as info:
        wire.open_tensors(header, frames, KEY)
    assert info.value.reason == "bad_cipher"
    with pytest.raises(crypto.CipherUnavailable):
        wire.seal(_msg(), 4, 1, KEY, LIMITS, CHUNK, crypto.AES256GCM)
    assert _open(_sealed(crypto.XCHACHA20POLY1305)).meta == {"samples": 10}  # the fallback still works


@needs_aes
def test_cipher_id_swapped_in_the_header_is_tampered():
    # the id is in the associated data: a receiver opens with the named cipher and fails
    for name, other in ((crypto.AES256GCM, 1), (crypto.XCHACHA20POLY1305, 2)):
        with pytest.raises(WireError) as info:
            _open(_with_header(_sealed(name), 9, other))
        assert info.value.reason == "tampered"


@pytest.mark.parametrize("frame", [1, 2, -1])
def test_sealed_tampered_part(cipher, frame):
    frames = _sealed(cipher)
    bad = bytearray(frames[frame])
    bad[len(bad) // 2] ^= 0x10
    frames[frame] = bytes(bad)
    with pytest.raises(WireError) as info:
        _open(frames)
    assert info.value.reason == "tampered"


@pytest.mark.parametrize("index,value", [(2, 3), (3, 5), (4, 6), (5, 100), (1, int(Kind.GLOBAL))])
def test_sealed_header_change_is_detected(cipher, index, value):
    # sender, recipient, round, counter, kind: a part cannot be moved to another message
    with pytest.raises(WireError) as info:
        _open(_with_header(_sealed(cipher), index, value))
    assert info.value.reason == "tampered"


def test_sealed_swapped_chunks_and_wrong_key(cipher):
    frames = _sealed(cipher)
    swapped = [frames[0], frames[1], frames[3], frames[2], *frames[4:]]
    for bad, key in ((swapped, KEY), (frames, bytes(32))):
        with pytest.raises(WireError) as info:
            _open(bad, key)
        assert info.value.reason == "tampered"


def test_sealed_parts_cannot_move_to_another_message(cipher):
    # same sender, key and header layout, another counter or round: every part fails, also
    # with the other message's header as the associated data (the subkey/nonce differ too)
    a = _sealed(cipher)
    for changes in ({"counter": 100}, {"round": 6}):
        fields = dict(counter=99, round=5) | changes
        b = [bytes(f) for f in wire.seal(_msg(round=fields["round"]), 4, fields["counter"], KEY, LIMITS, CHUNK, cipher)]
        for part in range(1, len(a)):
            mixed = [b[0], *b[1:part], a[part], *b[part + 1:]]
            with pytest.raises(WireError) as info:
                _open(mixed)
            assert info.value.reason == "tampered"
        header = wire.read_header(b, LIMITS)
        aead = crypto.MessageAead(cipher, KEY, 2, int(Kind.MODEL), 5, 99)  # a's own fields...
        with pytest.raises(crypto.CryptoError):
            aead.unseal(1, a[2], header.raw)  # ...but b's header: wrong associated data


@settings(max_examples=200, deadline=None)
@given(data=st.data(), cipher=st.sampled_from(AVAILABLE))
def test_any_single_byte_flip_in_a_sealed_frame_set_is_refused(data, cipher):
    # every byte is either associated data (the header) or sealed: nothing can change unnoticed
    frames = [bytearray(f) for f in wire.seal(_msg(tensors={"d": np.arange(10, dtype=np.int32)}), 4, 99, KEY,
                                               LIMITS, CHUNK, cipher)]
    i = data.draw(st.integers(0, len(frames) - 1))
    j = data.draw(st.integers(0, len(frames[i]) - 1))
    frames[i][j] ^= data.draw(st.integers(1, 255))
    with pytest.raises(WireError):
        _open([bytes(f) for f in frames])


# -- limits ----------------------------------------------------------------------------------


def test_limits_for_model_fit_the_largest_message_and_not_much_more():
    n = 100_000
    limits = Limits.for_model(n)
    secagg = Message(Kind.SECAGG, 1, 1, {"step": "masked", "body": b"x" * (1 << 20)},
                     {"masked": np.zeros(n, np.uint32), "extra": np.zeros(n, np.float32)})
    frames = wire.seal(secagg, 2, 1, KEY, limits)
    assert max(memoryview(f).nbytes for f in frames) <= limits.max_frame_bytes
    assert wire.read_header(frames, limits).sender == 1
    with pytest.raises(WireError, match="too_large"):
        wire.encode(_msg(tensors={"d": np.zeros(3 * n, np.float32)}), 2, 1, limits)
