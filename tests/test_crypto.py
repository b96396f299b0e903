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
        pytest.skip("pynacl has no cffi module here")
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


def _nonce(**changes: int) -> bytes:
    return crypto.frame_nonce(**{**FIELDS, **changes})


def test_seal_unseal_round_trip_from_and_into_buffers(aead_path):
    data = np.arange(1000, dtype=np.float32)
    sealed = crypto.seal(KEY, _nonce(), data, AAD)
    assert len(memoryview(sealed).cast("B")) == data.nbytes + crypto.TAG_BYTES
    assert bytes(crypto.unseal(KEY, _nonce(), sealed, AAD)) == data.tobytes()
    out = np.empty(data.nbytes, np.uint8)
    assert crypto.unseal(KEY, _nonce(), bytes(sealed), AAD, out) is out
    assert np.array_equal(out.view(np.float32), data)
    with pytest.raises(CryptoError, match="output buffer"):
        crypto.unseal(KEY, _nonce(), sealed, AAD, np.empty(3, np.uint8))


def test_both_aead_paths_agree(monkeypatch):
    data = os.urandom(5000)
    fast = bytes(crypto.seal(KEY, _nonce(), data, AAD))
    monkeypatch.setattr(crypto, "_lib", None)
    assert bytes(crypto.seal(KEY, _nonce(), data, AAD)) == fast
    assert bytes(crypto.unseal(KEY, _nonce(), fast, AAD)) == data


def test_tampered_ciphertext_raises(aead_path):
    sealed = bytearray(bytes(crypto.seal(KEY, _nonce(), b"x" * 100, AAD)))
    for i in (0, 50, len(sealed) - 1):  # data and tag
        bad = bytearray(sealed)
        bad[i] ^= 1
        with pytest.raises(CryptoError):
            crypto.unseal(KEY, _nonce(), bytes(bad), AAD)
    with pytest.raises(CryptoError):
        crypto.unseal(KEY, _nonce(), bytes(sealed[:10]), AAD)


def test_wrong_aad_or_key_raises(aead_path):
    sealed = crypto.seal(KEY, _nonce(), b"payload", AAD)
    with pytest.raises(CryptoError):
        crypto.unseal(KEY, _nonce(), sealed, AAD + b"!")
    with pytest.raises(CryptoError):
        crypto.unseal(bytes(32), _nonce(), sealed, AAD)


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_any_other_nonce_field_raises(aead_path, field):
    sealed = crypto.seal(KEY, _nonce(), b"payload", AAD)
    with pytest.raises(CryptoError):
        crypto.unseal(KEY, _nonce(**{field: FIELDS[field] + 1}), sealed, AAD)


def test_nonce_layout_is_unique_and_range_checked():
    nonces = {_nonce(**{f: FIELDS[f] + d}) for f in FIELDS for d in (0, 1)}
    assert len(nonces) == len(FIELDS) + 1 and all(len(n) == 24 for n in nonces)
    for bad in (dict(sender=-1), dict(kind=256), dict(round=2**32), dict(counter=2**64), dict(chunk=-1)):
        with pytest.raises(CryptoError):
            _nonce(**bad)


def test_short_key_or_nonce_is_refused_before_calling_c(aead_path):
    with pytest.raises(CryptoError):
        crypto.seal(KEY[:16], _nonce(), b"x", AAD)
    with pytest.raises(CryptoError):
        crypto.unseal(KEY, _nonce()[:12], b"x" * 32, AAD)
