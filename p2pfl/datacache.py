"""The on-disk cache of generated datasets: where it lives, one file per key, written atomically, checked on read.

Owns: the cache directory (`$P2PFL_CACHE`, else `$XDG_CACHE_HOME/p2pfl`, else `~/.cache/p2pfl`),
the file name of a key, writing a set of arrays as .npz through a temporary file renamed into
place, and reading it back only if its SHA-256 digest (over the key and every array's name,
dtype, shape and bytes, stored in the file) still matches. Must not touch: what the arrays
mean or how they are generated (`mnist1d`, `data`), torch, sockets.

A cache is never trusted: nothing in it is unpickled (`allow_pickle=False`), and a file that
cannot be read, or whose digest, key or arrays differ, is generated again and replaced. A
directory that cannot be written only costs the time to generate again; the run goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ENV = "P2PFL_CACHE"
DIGEST = "__sha256__"  # the member of the .npz that holds the digest of the others
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

Arrays = dict[str, np.ndarray]


def cache_dir() -> Path:
    """Where cached datasets live: $P2PFL_CACHE, else $XDG_CACHE_HOME/p2pfl, else ~/.cache/p2pfl."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "p2pfl"


def cache_path(name: str, key: Mapping[str, int]) -> Path:
    """The file of `name` at `key`, e.g. mnist1d-v1-seed0-train4000-test1000.npz."""
    _check_key(name, key)
    return cache_dir() / (name + "".join(f"-{k}{v}" for k, v in key.items()) + ".npz")


def cached(name: str, key: Mapping[str, int], build: Callable[[], Arrays]) -> Arrays:
    """The arrays of `name` at `key`: from the cache when a good file is there, else `build()`, then stored.

    `key` must hold everything the arrays depend on (a generator's version, its seed, the sizes);
    `build` must return the same arrays for the same key.
    """
    path = cache_path(name, key)
    hit = read(path, name, key)
    if hit is not None:
        return hit
    arrays = build()
    write(path, name, key, arrays)
    return arrays


def digest(name: str, key: Mapping[str, int], arrays: Mapping[str, np.ndarray]) -> bytes:
    """SHA-256 over the name, the key and every array (name, dtype, shape, bytes), in sorted order."""
    h = hashlib.sha256()
    h.update(repr((name, sorted(key.items()))).encode())
    for member in sorted(arrays):
        a = np.ascontiguousarray(arrays[member])
        h.update(repr((member, a.dtype.str, a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.digest()


def read(path: Path, name: str, key: Mapping[str, int]) -> Arrays | None:
    """The arrays stored at `path` if they are whole and are `name` at `key`; None otherwise (logged)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {member: npz[member] for member in npz.files}
        stored = arrays.pop(DIGEST).tobytes()
        if stored != digest(name, key, arrays):
            raise ValueError("digest mismatch")
    # Whatever a damaged or foreign file makes numpy or zipfile raise (BadZipFile, EOFError,
    # ValueError, KeyError, OSError, ...), the answer is the same: do not use it.
    except Exception as exc:  # noqa: BLE001
        log.warning("dataset cache %s is unusable (%s: %s); generating it again", path, type(exc).__name__, exc)
        return None
    return arrays


def write(path: Path, name: str, key: Mapping[str, int], arrays: Mapping[str, np.ndarray]) -> bool:
    """Store `arrays` at `path` atomically (a temporary file in the same directory, renamed); False if not stored.

    Concurrent writers of one key each rename a whole file: a reader sees one of them, never a mix.
    """
    if DIGEST in arrays:
        raise ValueError(f"{DIGEST} is reserved for the digest")
    members = dict(arrays)
    members[DIGEST] = np.frombuffer(digest(name, key, arrays), dtype=np.uint8)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        return True
    except OSError as exc:
        log.warning("cannot write the dataset cache %s (%s); going on without it", path, exc)
        return False
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _check_key(name: str, key: Mapping[str, int]) -> None:
    if not _NAME.match(name):
        raise ValueError(f"cache name must be letters, digits, '-' or '_', got {name!r}")
    for k, v in key.items():
        if not re.match(r"^[a-z]+$", k) or isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"cache key items must be lowercase words with non-negative integers, got {k!r}={v!r}")
