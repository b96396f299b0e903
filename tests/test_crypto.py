"""crypto: key files, pairwise keys, AEAD with bound nonces (real libsodium, no mocks)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from p2pfl import crypto
from p2pfl.crypto import CryptoError, KeyFileError


@pytest.fixture(params=["cffi", "bindings"])
def aead_path(request, monkeypatch):
    """Run AEAD tests on the zero-copy cffi path and on pynacl's public bindings (the fallback)."""
    if request.param == "bindings":
        monkeypatch.setattr(crypto, "_lib", None)
    elif crypto._lib is None:
        pytest.fail("pynacl's cffi module (nacl._sodium) is missing: the zero-copy AEAD path cannot be tested")
    return request.param


# -- identities ------------------------------------------------------------------------------


def test_keypair_shapes_and_public_derivation():
    private, public = crypto.generate_keypair()
    assert len(private) == len(public) == 32
    assert crypto.public_from_private(private) == public
    assert crypto.generate_keypair()[0] != private


def test_public_key_base64_round_trip_and_validation():
    _, public = crypto.generate_keypair()
    assert crypto.decode_public(crypto.encode_public(public)) == public
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.decode_public(crypto.encode_public(public)[:-4])
    with pytest.raises(ValueError, match="base64"):
        crypto.decode_public("not base64 at all!")
    with pytest.raises(CryptoError):
        crypto.encode_public(public[:31])


def test_write_keypair_private_file_is_0600_and_loads(tmp_path):
    private_path, public_b64 = crypto.write_keypair(tmp_path, 3)
    assert private_path == tmp_path / "node3.key"
    assert stat.S_IMODE(os.stat(private_path).st_mode) == 0o600
    assert (tmp_path / "node3.pub").read_text().strip() == public_b64
    private = crypto.load_private_key(private_path)
    assert crypto.public_from_private(private) == crypto.decode_public(public_b64)


def test_write_keypair_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        private_path, _ = crypto.write_keypair(tmp_path, 0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(private_path).st_mode) == 0o600


def test_write_keypair_refuses_to_overwrite(tmp_path):
    private_path, _ = crypto.write_keypair(tmp_path, 1)
    before = private_path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        crypto.write_keypair(tmp_path, 1)
    assert private_path.read_bytes() == before


def test_load_refuses_group_or_world_readable_key(tmp_path):
    private_path, _ = crypto.write_keypair(tmp_path, 2)
    os.chmod(private_path, 0o644)
    with pytest.raises(KeyFileError) as info:
        crypto.load_private_key(private_path)
    message = str(info.value)
    assert str(private_path) in message and "0644" in message and "chmod 600" in message


@pytest.mark.parametrize("content", ["", "not base64!\n", "AAAA\n"])
def test_load_refuses_malformed_key_naming_the_path(tmp_path, content):
    path = tmp_path / "bad.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode())
    os.close(fd)
    with pytest.raises(KeyFileError, match=str(path)):
        crypto.load_private_key(path)


def test_load_missing_key_names_the_path(tmp_path):
    with pytest.raises(KeyFileError, match="not found") as info:
        crypto.load_private_key(tmp_path / "nope.key")
    assert "nope.key" in str(info.value)


# -- pairwise keys ---------------------------------------------------------------------------


def test_pairwise_key_is_symmetric_and_context_separated():
    a_priv, a_pub = crypto.generate_keypair()
    b_priv, b_pub = crypto.generate_keypair()
    k_ab = crypto.pairwise_key(a_priv, 1, b_pub, 2, b"wire")
    k_ba = crypto.pairwise_key(b_priv, 2, a_pub, 1, b"wire")
    assert k_ab == k_ba and len(k_ab) == 32
    keys = {crypto.pairwise_key(a_priv, 1, b_pub, 2, c) for c in (b"wire", b"mask", b"e2e", b"wire2")}
    assert len(keys) == 4
    # bound to the ids: the same key pair under other ids gives another key
    assert crypto.pairwise_key(a_priv, 1, b_pub, 3, b"wire") != k_ab


def test_pairwise_key_differs_per_peer():
    a_priv, _ = crypto.generate_keypair()
    _, b_pub = crypto.generate_keypair()
    _, c_pub = crypto.generate_keypair()
    assert crypto.pairwise_key(a_priv, 1, b_pub, 2, b"x") != crypto.pairwise_key(a_priv, 1, c_pub, 2, b"x")


def test_pairwise_key_rejects_low_order_point_self_and_empty_context():
    a_priv, a_pub = crypto.generate_keypair()
    with pytest.raises(CryptoError, match="low-order"):
        crypto.pairwise_key(a_priv, 1, bytes(32), 2, b"wire")
    with pytest.raises(CryptoError):
        crypto.pairwise_key(a_priv, 1, a_pub, 1, b"wire")
    with pytest.raises(CryptoError):
        crypto.pairwise_key(a_priv, 1, crypto.generate_keypair()[1], 2, b"")


# -- AEAD ------------------------------------------------------------------------------------

KEY = bytes(range(32))
AAD = b"header bytes"
FIELDS = dict(sender=3, kind=1, round=7, counter=1_700_000_000_000_000_000, chunk=2)
MESSAGE = dict(sender=3, kind=1, round=7, counter=1_700_000_000_000_000_000)
needs_aes = pytest.mark.skipif(not crypto.aes256gcm_available(), reason="no AES-256-GCM on this CPU")
CIPHERS = [crypto.XCHACHA20POLY1305, pytest.param(crypto.AES256GCM, marks=needs_aes)]


@pytest.fixture(params=CIPHERS)
def cipher(request):
    return request.param


def _nonce(**changes: int) -> bytes:
    return crypto.frame_nonce(**{**FIELDS, **changes})


def _aead(cipher: str, key: bytes = KEY, **changes: int) -> crypto.MessageAead:
    return crypto.MessageAead(cipher, key, **{**MESSAGE, **changes})


def test_seal_unseal_round_trip_from_and_into_buffers(aead_path, cipher):
    data = np.arange(1000, dtype=np.float32)
    aead = _aead(cipher)
    sealed = aead.seal(2, data, AAD)
    assert len(memoryview(sealed).cast("B")) == data.nbytes + crypto.TAG_BYTES
    assert bytes(aead.unseal(2, sealed, AAD)) == data.tobytes()
    out = np.empty(data.nbytes, np.uint8)
    assert _aead(cipher).unseal(2, bytes(sealed), AAD, out) is out
    assert np.array_equal(out.view(np.float32), data)
    with pytest.raises(CryptoError, match="output buffer"):
        aead.unseal(2, sealed, AAD, np.empty(3, np.uint8))
    assert bytes(aead.unseal(0, aead.seal(0, b"", AAD), AAD)) == b""  # an empty part is a bare tag


def test_both_aead_paths_agree(monkeypatch, cipher):
    data = os.urandom(5000)
    fast = bytes(_aead(cipher).seal(2, data, AAD))
    monkeypatch.setattr(crypto, "_lib", None)
    assert crypto.cipher_available(cipher)  # the public bindings can run it too
    assert bytes(_aead(cipher).seal(2, data, AAD)) == fast
    assert bytes(_aead(cipher).unseal(2, fast, AAD)) == data


def test_the_two_ciphers_differ_and_do_not_open_each_other(aead_path):
    if not crypto.aes256gcm_available():
        pytest.fail("libsodium reports no AES-256-GCM on this CPU (needs AES-NI + PCLMUL): the fast path cannot be tested")
    chacha, aes = _aead(crypto.XCHACHA20POLY1305), _aead(crypto.AES256GCM)
    a, b = bytes(chacha.seal(1, b"payload", AAD)), bytes(aes.seal(1, b"payload", AAD))
    assert a != b
    with pytest.raises(CryptoError):
        aes.unseal(1, a, AAD)
    with pytest.raises(CryptoError):
        chacha.unseal(1, b, AAD)


def test_xchacha_is_the_pairwise_key_with_the_bound_nonce():
    # the construction of docs/wire.md, spelled out with the low-level functions
    sealed = crypto.seal(KEY, _nonce(chunk=5), b"payload", AAD, crypto.XCHACHA20POLY1305)
    assert bytes(_aead(crypto.XCHACHA20POLY1305).unseal(5, sealed, AAD)) == b"payload"


@needs_aes
def test_aes_gcm_is_a_message_subkey_with_the_part_as_nonce():
    import hashlib

    prefix = _nonce(chunk=0)[:18]
    assert prefix == bytes([1, 1]) + (3).to_bytes(4, "big") + (7).to_bytes(4, "big") + \
        (1_700_000_000_000_000_000).to_bytes(8, "big")
    subkey = hashlib.blake2b(prefix, digest_size=32, key=KEY, person=b"p2pfl-aes256gcm").digest()
    assert crypto.message_subkey(KEY, **MESSAGE) == subkey != KEY
    assert crypto.gcm_nonce(5) == bytes(8) + (5).to_bytes(4, "big")
    sealed = crypto.seal(subkey, crypto.gcm_nonce(5), b"payload", AAD, crypto.AES256GCM)
    assert bytes(_aead(crypto.AES256GCM).unseal(5, sealed, AAD)) == b"payload"
    # every message field changes the subkey; the part does not (it is the nonce)
    subkeys = {crypto.message_subkey(KEY, **{**MESSAGE, f: MESSAGE[f] + 1}) for f in MESSAGE}
    assert len(subkeys | {subkey}) == len(MESSAGE) + 1
    assert crypto.message_subkey(bytes(32), **MESSAGE) != subkey


def test_tampered_ciphertext_raises(aead_path, cipher):
    aead = _aead(cipher)
    sealed = bytearray(bytes(aead.seal(2, b"x" * 100, AAD)))
    for i in (0, 50, len(sealed) - 1):  # data and tag
        bad = bytearray(sealed)
        bad[i] ^= 1
        with pytest.raises(CryptoError):
            aead.unseal(2, bytes(bad), AAD)
    with pytest.raises(CryptoError):
        aead.unseal(2, bytes(sealed[:10]), AAD)


def test_failed_open_leaves_no_plaintext_in_out(cipher):
    data = np.arange(5000, dtype=np.uint8)
    aead = _aead(cipher)
    sealed = np.array(aead.seal(1, data, AAD))
    sealed[-1] ^= 1
    out = np.zeros(data.size, np.uint8)
    with pytest.raises(CryptoError):
        aead.unseal(1, sealed, AAD, out)
    assert np.count_nonzero(out == data) < 100  # chance matches only (AES-GCM wipes what it decrypted)


def test_wrong_aad_or_key_raises(aead_path, cipher):
    sealed = _aead(cipher).seal(2, b"payload", AAD)
    with pytest.raises(CryptoError):
        _aead(cipher).unseal(2, sealed, AAD + b"!")
    with pytest.raises(CryptoError):
        _aead(cipher, key=bytes(32)).unseal(2, sealed, AAD)


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_any_other_nonce_field_raises(aead_path, cipher, field):
    # a part cannot be opened as another sender's, kind's, round's, counter's or position's
    sealed = _aead(cipher).seal(FIELDS["chunk"], b"payload", AAD)
    changed = {**FIELDS, field: FIELDS[field] + 1}
    part = changed.pop("chunk")
    with pytest.raises(CryptoError):
        crypto.MessageAead(cipher, KEY, **changed).unseal(part, sealed, AAD)


def test_nonce_layout_is_unique_and_range_checked():
    nonces = {_nonce(**{f: FIELDS[f] + d}) for f in FIELDS for d in (0, 1)}
    assert len(nonces) == len(FIELDS) + 1 and all(len(n) == 24 for n in nonces)
    for bad in (dict(sender=-1), dict(kind=256), dict(round=2**32), dict(counter=2**64), dict(chunk=-1)):
        with pytest.raises(CryptoError):
            _nonce(**bad)
    for bad in (dict(sender=2**32), dict(counter=-1)):
        for name in crypto.CIPHER_IDS:
            with pytest.raises(CryptoError):
                crypto.MessageAead(name, KEY, **{**MESSAGE, **bad})
    with pytest.raises(CryptoError):
        crypto.gcm_nonce(2**32)


def test_short_key_or_nonce_is_refused_before_calling_c(aead_path, cipher):
    nonce = bytes(crypto.NONCE_SIZES[cipher])
    with pytest.raises(CryptoError):
        crypto.seal(KEY[:16], nonce, b"x", AAD, cipher)
    with pytest.raises(CryptoError):
        crypto.unseal(KEY, nonce[:-1], b"x" * 32, AAD, cipher=cipher)
    with pytest.raises(CryptoError):
        crypto.MessageAead(cipher, KEY[:31], **MESSAGE)
    other = crypto.AES256GCM if cipher == crypto.XCHACHA20POLY1305 else crypto.XCHACHA20POLY1305
    with pytest.raises(CryptoError):  # each cipher's nonce has its own size
        crypto.seal(KEY, bytes(crypto.NONCE_SIZES[other]), b"x", AAD, cipher)


def test_unknown_cipher_is_refused():
    with pytest.raises(CryptoError, match="unknown cipher"):
        crypto.MessageAead("rot13", KEY, **MESSAGE)
    with pytest.raises(CryptoError, match="unknown cipher"):
        crypto.seal(KEY, _nonce(), b"x", AAD, "chacha20")
    with pytest.raises(ValueError, match="unknown cipher"):
        crypto.choose_cipher("aes128gcm")


def test_choose_cipher_prefers_aes_gcm_where_available(monkeypatch):
    assert crypto.choose_cipher(crypto.XCHACHA20POLY1305) == crypto.XCHACHA20POLY1305
    expected = crypto.AES256GCM if crypto.aes256gcm_available() else crypto.XCHACHA20POLY1305
    assert crypto.choose_cipher() == crypto.choose_cipher("auto") == expected
    # a machine without AES-NI: auto falls back, an explicit request is refused, AES cannot be used
    monkeypatch.setattr(crypto, "aes256gcm_available", lambda: False)
    assert crypto.choose_cipher("auto") == crypto.XCHACHA20POLY1305
    with pytest.raises(crypto.CipherUnavailable, match="xchacha20poly1305"):
        crypto.choose_cipher(crypto.AES256GCM)
    with pytest.raises(crypto.CipherUnavailable):
        crypto.MessageAead(crypto.AES256GCM, KEY, **MESSAGE)
    with pytest.raises(crypto.CipherUnavailable):
        crypto.seal(KEY, bytes(12), b"x", AAD, crypto.AES256GCM)
    assert not crypto.cipher_available(crypto.AES256GCM) and crypto.cipher_available(crypto.XCHACHA20POLY1305)


def test_cipher_ids_and_tag_size_are_fixed():
    # the header carries these ids: changing one is a wire-format change
    assert crypto.CIPHER_IDS == {"xchacha20poly1305": 1, "aes256gcm": 2}
    assert crypto.TAG_BYTES == 16 == getattr(crypto.sodium, "crypto_aead_aes256gcm_ABYTES", 16)
