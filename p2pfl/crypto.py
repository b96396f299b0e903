"""Cryptography of one node: identities, pairwise keys, and AEAD with bound nonces.

Owns the long-term X25519 identity of a node (key files), the derivation of pairwise symmetric
keys between two nodes (one key per purpose, the `context`), the two AEAD ciphers and how a
message's identity (sender, kind, round, counter, part) binds their nonces (`MessageAead`), and
sealing/opening of byte buffers. It does not know the byte layout of messages (that is `wire`)
nor sockets (that is `transport`), and it never logs key material.

Ciphers (docs/wire.md, *AEAD and nonce*):
- "aes256gcm": AES-256-GCM, used when the CPU has it (AES-NI + PCLMUL, or ARMv8 crypto), about
  3x faster than the fallback here. Its nonce is 12 bytes, too short for our 24-byte bound
  nonce, so every message gets its own subkey, BLAKE2b-256 keyed with the pairwise key over the
  nonce prefix that names the message (sender, kind, round, counter), and the part index is the
  12-byte nonce under that subkey.
- "xchacha20poly1305": XChaCha20-Poly1305 (IETF) with the 24-byte nonce directly under the
  pairwise key; portable (pure software), always available.

Everything goes through libsodium (pynacl). For the AEAD itself we call libsodium through
pynacl's cffi module so that we can encrypt straight from a numpy buffer and decrypt straight
into the destination array: the public `nacl.bindings` functions only take `bytes` and return a
fresh copy, which costs two extra passes over every byte (measured in BENCHMARKS.md). When that
module is not there (a future pynacl), the public bindings are used, with the copies.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import stat
import struct
from pathlib import Path
from typing import Any

import nacl.bindings as sodium
import nacl.exceptions
import numpy as np

try:  # pynacl's own cffi binding of libsodium; see the module docstring for why
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - depends on the installed pynacl
    _ffi = _lib = None

KEY_BYTES = 32  # X25519 private and public keys, and every derived symmetric key
NONCE_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24: the bound nonce of a part
TAG_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16, for both ciphers

# Ciphers: name -> wire id (the header carries the id). Ids are never reused for another cipher.
XCHACHA20POLY1305 = "xchacha20poly1305"
AES256GCM = "aes256gcm"
AUTO = "auto"  # AES-256-GCM where this machine has it, else XChaCha20-Poly1305
CIPHER_IDS: dict[str, int] = {XCHACHA20POLY1305: 1, AES256GCM: 2}
CIPHER_NAMES: dict[int, str] = {v: k for k, v in CIPHER_IDS.items()}
CIPHER_CHOICES = (AUTO, AES256GCM, XCHACHA20POLY1305)
NONCE_SIZES = {XCHACHA20POLY1305: NONCE_BYTES, AES256GCM: 12}
_SODIUM_NAMES = {XCHACHA20POLY1305: "crypto_aead_xchacha20poly1305_ietf", AES256GCM: "crypto_aead_aes256gcm"}
# libsodium's functions by prefix, looked up once (a getattr per part showed in profiles)
_C_ENCRYPT = {n: getattr(_lib, n + "_encrypt") for n in _SODIUM_NAMES.values()} if _lib is not None else {}
_C_DECRYPT = {n: getattr(_lib, n + "_decrypt") for n in _SODIUM_NAMES.values()} if _lib is not None else {}

# Nonce layout, big-endian: purpose u8 | kind u8 | sender u32 | round u32 | counter u64 | chunk u32 | 0 u16.
_NONCE = struct.Struct(">BBIIQIH")
_MESSAGE_NONCE_BYTES = 18  # purpose .. counter: the prefix that names one message of one sender
_GCM_NONCE = struct.Struct(">8xI")  # AES-256-GCM nonce under a message subkey: 8 zero bytes | part u32
NONCE_PURPOSE_FRAME = 1  # the only purpose so far; a new one must never reuse a value
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

_KDF_PERSON = b"p2pfl-pairwise"  # BLAKE2b personalisation: keys of this KDF are ours alone
_SUBKEY_PERSON = b"p2pfl-aes256gcm"  # BLAKE2b personalisation of the per-message AES-256-GCM subkey


class CryptoError(Exception):
    """A seal/open or key agreement failed (tampered data, wrong key or nonce, bad public key)."""


class CipherUnavailable(CryptoError):
    """The cipher is known but this machine (CPU or libsodium build) cannot run it."""


class KeyFileError(Exception):
    """A key file is missing, malformed or readable by others; the message names the path."""


# -- identities ----------------------------------------------------------------------------------


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair: (private, public), 32 bytes each."""
    public, private = sodium.crypto_box_keypair()
    return private, public


def public_from_private(private: bytes) -> bytes:
    """The X25519 public key that belongs to `private`."""
    _check_len(private, KEY_BYTES, "private key")
    return sodium.crypto_scalarmult_base(private)


def encode_public(public: bytes) -> str:
    """Base64 text of a 32-byte public key (the form cluster files carry)."""
    _check_len(public, KEY_BYTES, "public key")
    return base64.b64encode(public).decode("ascii")


def decode_public(text: str) -> bytes:
    """The 32-byte public key in base64 `text`; ValueError if it is not exactly that."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError) as exc:
        raise ValueError(f"public key is not valid base64: {exc}") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"public key must be {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def key_paths(directory: Path | str, node_id: int) -> tuple[Path, Path]:
    """Where the key pair of `node_id` lives in `directory`: (nodeK.key, nodeK.pub)."""
    directory = Path(directory)
    return directory / f"node{node_id}.key", directory / f"node{node_id}.pub"


def write_keypair(directory: Path | str, node_id: int) -> tuple[Path, str]:
    """Generate and write a key pair for `node_id`; returns (private key path, public key base64).

    The private key file is created with mode 0600 in the same system call that creates it, so
    it is never readable by others, not even for a moment; an existing file is never overwritten
    (KeyFileError), because losing an identity silently is worse than failing loudly.
    """
    private_path, public_path = key_paths(directory, node_id)
    private, public = generate_keypair()
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{private_path}: key file already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(f"{private_path}: cannot create key file: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(private).decode("ascii") + "\n")
    public_b64 = encode_public(public)
    public_path.write_text(public_b64 + "\n")
    return private_path, public_b64


def load_private_key(path: Path | str) -> bytes:
    """The 32-byte private key in `path`; KeyFileError if missing, malformed or not private."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"{path}: not a regular file")
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: key file is readable or writable by group/others (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
    except (binascii.Error, ValueError, OSError):
        raise KeyFileError(f"{path}: not a base64 private key") from None  # no detail: it is key material
    if len(raw) != KEY_BYTES:
        raise KeyFileError(f"{path}: private key must be {KEY_BYTES} bytes, got {len(raw)}")
    return raw


# -- pairwise keys -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _x25519(my_private: bytes, peer_public: bytes) -> bytes:
    """Raw X25519 shared secret of static keys; cached because every context of a peer starts from it."""
    return x25519(my_private, peer_public)


def x25519(my_private: bytes, peer_public: bytes) -> bytes:
    """Raw X25519 shared secret, not cached: ephemeral secrets must not outlive their session."""
    _check_len(my_private, KEY_BYTES, "private key")
    _check_len(peer_public, KEY_BYTES, "public key")
    try:
        return sodium.crypto_scalarmult(my_private, peer_public)
    except nacl.exceptions.CryptoError:
        # libsodium refuses low-order public keys (the shared secret would be all zeros)
        raise CryptoError("public key rejected by X25519 (low-order point)") from None


def pairwise_key(my_private: bytes, my_id: int, peer_public: bytes, peer_id: int, context: bytes) -> bytes:
    """The 32-byte key that `my_id` and `peer_id` share for purpose `context`.

    X25519, then keyed BLAKE2b over context, both ids and both public keys in id order: both
    ends compute the same key, a key is bound to the identities it was made for, and different
    contexts (b"wire", b"mask", b"e2e") give independent keys.
    """
    _check_len(my_private, KEY_BYTES, "private key")
    _check_len(peer_public, KEY_BYTES, "public key")
    if my_id == peer_id:
        raise CryptoError(f"no pairwise key of node {my_id} with itself")
    if not context or len(context) > 255:
        raise CryptoError("context must be 1 to 255 bytes")
    my_public = public_from_private(my_private)
    (lo_id, lo_pub), (hi_id, hi_pub) = sorted([(my_id, my_public), (peer_id, peer_public)])
    # the context is length-prefixed so no (context, ids) pair can be read as another
    data = bytes([len(context)]) + context + struct.pack(">QQ", lo_id, hi_id) + lo_pub + hi_pub
    secret = _x25519(my_private, peer_public)
    return hashlib.blake2b(data, digest_size=KEY_BYTES, key=secret, person=_KDF_PERSON).digest()


# -- AEAD ----------------------------------------------------------------------------------------


def aes256gcm_available() -> bool:
    """Whether libsodium can run AES-256-GCM here (it needs AES-NI + PCLMUL, or ARMv8 crypto)."""
    if _lib is not None:
        return _lib_has_aes256gcm(_lib)
    return _bindings_have_aes256gcm()


@functools.lru_cache(maxsize=2)
def _lib_has_aes256gcm(lib: Any) -> bool:
    # the CPU does not change under a running process: ask libsodium once, not once per part
    return lib.crypto_aead_aes256gcm_is_available() == 1


@functools.lru_cache(maxsize=1)
def _bindings_have_aes256gcm() -> bool:
    """The public-bindings answer: pynacl has no `is_available` binding, so try one empty seal."""
    encrypt = getattr(sodium, "crypto_aead_aes256gcm_encrypt", None)
    if encrypt is None:  # an older pynacl
        return False
    try:
        encrypt(b"", b"", bytes(12), bytes(KEY_BYTES))
    except nacl.exceptions.UnavailableError:
        return False
    return True


def cipher_available(cipher: str) -> bool:
    """Whether `cipher` (a name in CIPHER_IDS) can seal and open on this machine."""
    if cipher == AES256GCM:
        return aes256gcm_available()
    return cipher == XCHACHA20POLY1305


def choose_cipher(choice: str = AUTO) -> str:
    """The cipher a sender uses for `choice`: "auto" | "aes256gcm" | "xchacha20poly1305".

    "auto" is AES-256-GCM where this machine has it and XChaCha20-Poly1305 elsewhere. An explicit
    cipher this machine cannot run is refused (CipherUnavailable), and an unknown name too
    (ValueError): a node must not start with a cipher it cannot use.
    """
    if choice == AUTO:
        return AES256GCM if aes256gcm_available() else XCHACHA20POLY1305
    if choice not in CIPHER_IDS:
        raise ValueError(f"unknown cipher {choice!r}; choose one of {', '.join(CIPHER_CHOICES)}")
    if not cipher_available(choice):
        raise CipherUnavailable(f"{choice} is not available on this machine (libsodium needs AES-NI and "
                                f"PCLMUL, or ARMv8 crypto extensions); use {XCHACHA20POLY1305}")
    return choice


def frame_nonce(sender: int, kind: int, round: int, counter: int, chunk: int) -> bytes:
    """The 24-byte nonce of one sealed part of one message.

    A sender's counter never repeats (it starts at the clock in ns and only grows), so the
    (sender, counter, chunk) triple is unique under any key the sender holds; kind and round are
    in it too so a part cannot be opened as another kind or round even if a header were forged.
    Its first 18 bytes (everything but the part) name the message; AES-256-GCM derives the
    message's subkey from them (`message_subkey`).
    """
    if not (0 <= sender <= U32_MAX and 0 <= kind <= 255 and 0 <= round <= U32_MAX
            and 0 <= counter <= U64_MAX and 0 <= chunk <= U32_MAX):
        raise CryptoError("nonce field out of range")
    return _NONCE.pack(NONCE_PURPOSE_FRAME, kind, sender, round, counter, chunk, 0)


def message_subkey(key: bytes, sender: int, kind: int, round: int, counter: int) -> bytes:
    """The AES-256-GCM key of one message: BLAKE2b-256(key = pairwise key, person = "p2pfl-aes256gcm",
    data = the 18-byte message prefix of its nonces: purpose, kind, sender, round, counter).

    BLAKE2b keyed with a secret is a PRF, and the prefix never repeats under one pairwise key (the
    sender is in it and a sender never reuses a counter), so each message gets a fresh, independent
    key; its parts use the part index as the GCM nonce, so no (key, nonce) pair is ever used twice.
    """
    _check_len(key, KEY_BYTES, "key")
    return _subkey(key, frame_nonce(sender, kind, round, counter, 0)[:_MESSAGE_NONCE_BYTES])


def _subkey(key: bytes, prefix: bytes) -> bytes:
    return hashlib.blake2b(prefix, digest_size=KEY_BYTES, key=key, person=_SUBKEY_PERSON).digest()


def gcm_nonce(part: int) -> bytes:
    """The 12-byte AES-256-GCM nonce of part `part` under its message's subkey."""
    if not 0 <= part <= U32_MAX:
        raise CryptoError("nonce field out of range")
    return _GCM_NONCE.pack(part)


class MessageAead:
    """Seals and opens the parts of one message: its cipher, its key, and the fields its nonces bind.

    XChaCha20-Poly1305: the pairwise key and `frame_nonce(..., part)`. AES-256-GCM: the message
    subkey (derived once, here) and `gcm_nonce(part)`. CipherUnavailable if this machine cannot
    run `cipher`, CryptoError for an unknown cipher or a field out of range. Every check on the
    key, cipher and fields is made here, once: a part then costs only its nonce and the C call.
    """

    __slots__ = ("cipher", "_key", "_fields", "_name")

    def __init__(self, cipher: str, key: bytes, sender: int, kind: int, round: int, counter: int) -> None:
        _check_len(key, KEY_BYTES, "key")
        if cipher not in CIPHER_IDS:
            raise CryptoError(f"unknown cipher {cipher!r}")
        if not cipher_available(cipher):
            raise CipherUnavailable(f"{cipher} is not available on this machine")
        first = frame_nonce(sender, kind, round, counter, 0)  # range checks, once
        self.cipher = cipher
        self._name = _SODIUM_NAMES[cipher]
        self._fields = (sender, kind, round, counter)
        self._key = _subkey(key, first[:_MESSAGE_NONCE_BYTES]) if cipher == AES256GCM else key

    def nonce(self, part: int) -> bytes:
        if self.cipher == AES256GCM:
            return gcm_nonce(part)
        return frame_nonce(*self._fields, part)

    def seal(self, part: int, plaintext: Any, aad: bytes, out: Any = None) -> Any:
        return _seal(self._name, self._key, self.nonce(part), plaintext, aad, out)

    def unseal(self, part: int, ciphertext: Any, aad: bytes, out: Any = None) -> Any:
        return _unseal(self._name, self._key, self.nonce(part), ciphertext, aad, out)


def seal(key: bytes, nonce: bytes, plaintext: Any, aad: bytes, cipher: str = XCHACHA20POLY1305,
         out: Any = None) -> Any:
    """Encrypt and authenticate `plaintext` (any contiguous buffer); returns a buffer of len+16.

    `nonce` is 24 bytes for XChaCha20-Poly1305 and 12 for AES-256-GCM; the caller guarantees that
    a (key, nonce) pair is never used twice (`MessageAead` does). The result is written into
    `out` if given (a writable buffer of exactly len+16 bytes, returned) and is otherwise a fresh
    numpy uint8 array (no zero-fill, no copy-out) on the fast path, `bytes` on the fallback; all
    are buffers that zmq and `unseal` accept.
    """
    return _seal(_sodium_name(cipher, key, nonce), key, nonce, plaintext, aad, out)


def unseal(key: bytes, nonce: bytes, ciphertext: Any, aad: bytes, out: Any = None,
           cipher: str = XCHACHA20POLY1305) -> Any:
    """Check and decrypt `ciphertext`; CryptoError if anything (data, aad, nonce, key) differs.

    With `out` (a writable buffer of exactly len(ciphertext) - 16 bytes) the plaintext is written
    there and `out` is returned. If authentication fails, `out` holds no plaintext: libsodium
    checks the tag before it decrypts (XChaCha20-Poly1305) or overwrites what it decrypted
    (AES-256-GCM); the caller discards it either way.
    """
    return _unseal(_sodium_name(cipher, key, nonce), key, nonce, ciphertext, aad, out)


def _seal(name: str, key: bytes, nonce: bytes, plaintext: Any, aad: bytes, out: Any) -> Any:
    """`seal` once key, nonce and cipher (libsodium prefix `name`) have been checked."""
    size = memoryview(plaintext).nbytes + TAG_BYTES
    if out is not None and memoryview(out).nbytes != size:
        raise CryptoError(f"output buffer holds {memoryview(out).nbytes} bytes, sealed part is {size}")
    if _lib is None:
        sealed = getattr(sodium, name + "_encrypt")(bytes(plaintext), aad, nonce, key)
        if out is None:
            return sealed
        memoryview(out).cast("B")[:] = sealed
        return out
    src = _ffi.from_buffer(plaintext)
    if out is None:
        out = np.empty(size, np.uint8)
    rc = _C_ENCRYPT[name](
        _ffi.from_buffer(out, require_writable=True), _ffi.NULL, src, len(src), aad, len(aad), _ffi.NULL, nonce, key)
    if rc != 0:
        raise CryptoError("encryption failed")
    return out


def _unseal(name: str, key: bytes, nonce: bytes, ciphertext: Any, aad: bytes, out: Any) -> Any:
    """`unseal` once key, nonce and cipher (libsodium prefix `name`) have been checked."""
    size = memoryview(ciphertext).nbytes - TAG_BYTES
    if size < 0:
        raise CryptoError("ciphertext shorter than its tag")
    if out is not None and memoryview(out).nbytes != size:
        raise CryptoError(f"output buffer holds {memoryview(out).nbytes} bytes, plaintext is {size}")
    if _lib is None:
        try:
            plain = getattr(sodium, name + "_decrypt")(bytes(ciphertext), aad, nonce, key)
        except nacl.exceptions.CryptoError:
            raise CryptoError("authentication failed") from None
        if out is None:
            return plain
        memoryview(out).cast("B")[:] = plain
        return out
    if out is None:
        out = np.empty(size, np.uint8)
    rc = _C_DECRYPT[name](
        _ffi.from_buffer(out, require_writable=True), _ffi.NULL, _ffi.NULL,
        _ffi.from_buffer(ciphertext), size + TAG_BYTES, aad, len(aad), nonce, key)
    if rc != 0:
        raise CryptoError("authentication failed")
    return out


def _sodium_name(cipher: str, key: bytes, nonce: bytes) -> str:
    """libsodium's prefix for `cipher`, after every check that must come before calling C."""
    name = _SODIUM_NAMES.get(cipher)
    if name is None:
        raise CryptoError(f"unknown cipher {cipher!r}")
    # cffi would read past a short key or nonce: check lengths before calling C
    _check_len(key, KEY_BYTES, "key")
    _check_len(nonce, NONCE_SIZES[cipher], "nonce")
    # libsodium's AES-256-GCM must not be called where the CPU lacks it
    if cipher == AES256GCM and not aes256gcm_available():
        raise CipherUnavailable(f"{cipher} is not available on this machine")
    return name


def _check_len(value: bytes, size: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise CryptoError(f"{what} must be {size} bytes")
