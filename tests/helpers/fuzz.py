"""A deterministic generator of hostile multipart messages (lists of byte frames).

`FrameFuzzer(seed, bases).message()` returns one message: random bytes, a random msgpack
header with random frames, or (most often) a valid sealed message from `bases` mutated by one
to three operations: bit flips, byte sets, truncations, extensions, dropped / duplicated /
inserted / swapped frames, header fields changed to other values or types, tensor descriptors
rewritten, headers of one message put on another.

The caller picks `bases` so that no mutation can be accepted: every base must carry a counter
the victim has already passed (an unmodified copy is then a replay), and anything else fails a
check before or at authentication. Every frame stays far below the socket's MAXMSGSIZE, so
libzmq delivers every message to the application and each one must be counted there.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import msgpack

from p2pfl import wire

MAX_RANDOM_FRAME = 600
MAX_RANDOM_FRAMES = 40


class FrameFuzzer:
    def __init__(self, seed: int, bases: list[list[bytes]]) -> None:
        self.rng = random.Random(seed)
        self.bases = [[bytes(f) for f in b] for b in bases]
        self.ops: list[tuple[str, Callable[[list[bytes]], list[bytes]]]] = [
            ("bit_flips", self._bit_flips),
            ("set_byte", self._set_byte),
            ("truncate_frame", self._truncate_frame),
            ("extend_frame", self._extend_frame),
            ("empty_frame", self._empty_frame),
            ("drop_frames", self._drop_frames),
            ("duplicate_frame", self._duplicate_frame),
            ("insert_random_frame", self._insert_random_frame),
            ("swap_frames", self._swap_frames),
            ("header_field", self._header_field),
            ("header_tensors", self._header_tensors),
            ("other_header", self._other_header),
        ]
        self.used: dict[str, int] = {}

    # -- one message -------------------------------------------------------------------------

    def message(self) -> list[bytes]:
        rng = self.rng
        pick = rng.random()
        if pick < 0.12:
            self._use("random_bytes")
            frames = [self._random_bytes() for _ in range(rng.randint(1, MAX_RANDOM_FRAMES))]
        elif pick < 0.25:
            self._use("random_header")
            frames = [msgpack.packb(self._random_header())]
            frames += [self._random_bytes() for _ in range(rng.randint(0, 12))]
        else:
            frames = list(rng.choice(self.bases))
            for _ in range(rng.randint(1, 3)):
                name, op = rng.choice(self.ops)
                self._use(name)
                frames = op(frames) or [b""]  # ZeroMQ cannot send a message of no frames
        return frames

    def _use(self, name: str) -> None:
        self.used[name] = self.used.get(name, 0) + 1

    # -- random values -----------------------------------------------------------------------

    def _random_bytes(self) -> bytes:
        n = min(int(self.rng.expovariate(1 / 60)), MAX_RANDOM_FRAME)
        return self.rng.randbytes(n)

    def _random_value(self, depth: int = 0) -> Any:
        rng = self.rng
        choice = rng.randrange(14 if depth < 3 else 11)
        if choice == 0:
            return rng.randint(-(2**63), -1)
        if choice == 1:
            return rng.randint(0, 10)
        if choice == 2:
            return rng.choice([0, 1, 2, 3, 4, 5, 255, 256, 4095, 4096, 2**20, 2**22, 2**22 + 1,
                               2**32 - 1, 2**32, 2**63, 2**64 - 1])
        if choice == 3:
            return rng.randint(0, 2**64 - 1)
        if choice == 4:
            return rng.choice([True, False])
        if choice == 5:
            return None
        if choice == 6:
            return rng.choice([0.0, 1.0, -1.5, float("nan"), float("inf")])
        if choice == 7:
            return rng.choice(["", "delta", "x" * 65, "float32", "int8", "bool", "\u00e9\u00e8"])
        if choice == 8:
            return rng.randbytes(rng.randint(0, 16))
        if choice == 9:
            return rng.choice(list(wire.DTYPES))
        if choice == 10:
            return [rng.randint(0, 70_000) for _ in range(rng.randint(0, 4))]
        if choice == 11:
            return [self._random_value(depth + 1) for _ in range(rng.randint(0, 4))]
        if choice == 12:
            return [self._random_spec(depth + 1) for _ in range(rng.randint(0, 10))]
        return {str(rng.randint(0, 9)): self._random_value(depth + 1) for _ in range(rng.randint(0, 3))}

    def _random_spec(self, depth: int) -> Any:
        """A tensor descriptor [name, dtype, shape], plausible or not (sometimes not a list at all)."""
        if self.rng.random() < 0.3:
            return self._random_value(depth + 1)
        return self._descriptor()

    def _descriptor(self) -> list:
        rng = self.rng
        name = rng.choice(["delta", "d", "", "x" * 65, 7, None])
        dtype = rng.choice([*wire.DTYPES, "complex64", "object", "<f4", 1])
        shape = rng.choice([[rng.randint(0, 5000)], [], [0], [-1], [2**40],
                            [rng.randint(0, 50) for _ in range(rng.randint(0, 40))], "3", [True]])
        return [name, dtype, shape]

    def _random_header(self) -> list:
        rng = self.rng
        fields = [1, rng.randint(0, 5), rng.choice([0, 1, 2, 3, 9, 2**32 - 1]), rng.choice([0, 1, 2, 5]),
                  rng.randint(0, 10), rng.randint(0, 2**64 - 1), rng.choice([4096, 2**20, 100, 2**23]),
                  rng.randint(0, 12), [self._random_spec(1) for _ in range(rng.randint(0, 3))]]
        for _ in range(rng.randint(0, 3)):  # then break a few fields
            fields[rng.randrange(len(fields))] = self._random_value()
        if rng.random() < 0.1:
            fields = fields[: rng.randrange(len(fields))] if rng.random() < 0.5 else fields + [self._random_value()]
        return fields

    # -- mutations of a frame list -----------------------------------------------------------

    def _index(self, frames: list[bytes]) -> int:
        return self.rng.randrange(len(frames))

    def _bit_flips(self, frames: list[bytes]) -> list[bytes]:
        i = self._index(frames)
        if not frames[i]:
            return frames
        data = bytearray(frames[i])
        for _ in range(self.rng.randint(1, 8)):
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return frames[:i] + [bytes(data)] + frames[i + 1:]

    def _set_byte(self, frames: list[bytes]) -> list[bytes]:
        i = self._index(frames)
        if not frames[i]:
            return frames
        data = bytearray(frames[i])
        data[self.rng.randrange(len(data))] = self.rng.choice([0x00, 0xFF, 0xC0, 0xC1, 0xDD, 0xCF, 0x90, 0x99])
        return frames[:i] + [bytes(data)] + frames[i + 1:]

    def _truncate_frame(self, frames: list[bytes]) -> list[bytes]:
        i = self._index(frames)
        return frames[:i] + [frames[i][: self.rng.randint(0, max(0, len(frames[i]) - 1))]] + frames[i + 1:]

    def _extend_frame(self, frames: list[bytes]) -> list[bytes]:
        i = self._index(frames)
        return frames[:i] + [frames[i] + self.rng.randbytes(self.rng.randint(1, 64))] + frames[i + 1:]

    def _empty_frame(self, frames: list[bytes]) -> list[bytes]:
        i = self._index(frames)
        return frames[:i] + [b""] + frames[i + 1:]

    def _drop_frames(self, frames: list[bytes]) -> list[bytes]:
        keep = sorted(self.rng.sample(range(len(frames)), self.rng.randint(0, max(0, len(frames) - 1))))
        return [frames[k] for k in keep]

    def _duplicate_frame(self, frames: list[bytes]) -> list[bytes]:
        i = self._index(frames)
        return frames[: i + 1] + [frames[i]] + frames[i + 1:]

    def _insert_random_frame(self, frames: list[bytes]) -> list[bytes]:
        i = self.rng.randint(0, len(frames))
        return frames[:i] + [self._random_bytes()] + frames[i:]

    def _swap_frames(self, frames: list[bytes]) -> list[bytes]:
        if len(frames) < 2:
            return frames
        i, j = self.rng.sample(range(len(frames)), 2)
        out = list(frames)
        out[i], out[j] = out[j], out[i]
        return out

    def _decoded_header(self, frames: list[bytes]) -> list | None:
        try:
            fields = msgpack.unpackb(frames[0], strict_map_key=False)
        except Exception:  # noqa: BLE001 - an earlier mutation broke it: nothing to edit
            return None
        return fields if isinstance(fields, list) else None

    def _header_field(self, frames: list[bytes]) -> list[bytes]:
        fields = self._decoded_header(frames)
        if not fields:
            return self._bit_flips(frames)
        i = self.rng.randrange(len(fields))
        if self.rng.random() < 0.5 and type(fields[i]) is int:  # a nearby value of the right type
            fields[i] = max(0, fields[i] + self.rng.choice([-1, 1, 2, -2, 1000]))
        else:
            fields[i] = self._random_value()
        return [msgpack.packb(fields)] + frames[1:]

    def _header_tensors(self, frames: list[bytes]) -> list[bytes]:
        fields = self._decoded_header(frames)
        if not fields or len(fields) != wire.HEADER_FIELDS or not isinstance(fields[8], list):
            return self._header_field(frames)
        specs = fields[8]
        if specs and self.rng.random() < 0.7:
            k = self.rng.randrange(len(specs))
            spec = list(specs[k]) if isinstance(specs[k], list) else [specs[k]]
            if len(spec) == 3 and self.rng.random() < 0.7:
                j = self.rng.randrange(3)
                spec[j] = self._descriptor()[j] if self.rng.random() < 0.7 else self._random_value()
            else:
                spec = self._random_spec(1)
            specs[k] = spec
        else:
            specs.append(self._random_spec(1))
        return [msgpack.packb(fields)] + frames[1:]

    def _other_header(self, frames: list[bytes]) -> list[bytes]:
        return [self.rng.choice(self.bases)[0]] + frames[1:]
