"""Secure FedAvg on a star: the topology adapter with the hub as the only aggregator.

Each active leaf contributes w_u * [clip(x_u), 1] (w_u = min(n_u, max_samples) / max_samples) as
the one member of the hub's group; the hub unmasks S = sum w_u [x_u, 1], adds its own model in
plain, divides by the total weight and sends the average back as `Kind.GLOBAL` with tensor
"delta". With `DistributedNoise` every leaf adds its share of a discrete Gaussian to its
fixed-point integers (docs/privacy.md). FedAvg does not pipeline the share phase.

Owns: the hub's and the leaves' round (active set, weights, encoding, fallback, average, the
hub's final word to every leaf). Must not touch: the roles' internals (only their methods and
read-only state, failures as typed `GroupFailure`), message bodies, sockets.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from p2pfl.fixedpoint import FixedPoint
from p2pfl.messages import Kind, Message, Outbound
from p2pfl.protocols import DELTA, Rejected, check_vector
from p2pfl.secagg.aggregator import Aggregator
from p2pfl.secagg.base import SecAggRound, sanitize
from p2pfl.secagg.codec import AGGREGATOR_STEPS, MEMBER_STEPS, STEP_ABORT, Abort, secagg_message, step_of
from p2pfl.secagg.group import Failure, GroupSpec, SecAggParams
from p2pfl.secagg.member import Member, NoiseFn
from p2pfl.secagg.sealing import RandomFn, SecretFn
from p2pfl.secagg.states import AggStage, MemberStage

HEADROOM_STDS = 12.0  # fixed-point room for the noise: P(wrap) < d * 4e-33 per round (docs/privacy.md)


@dataclass(frozen=True)
class DistributedNoise:
    """Distributed DP for `SecureFedAvgRound`: each contributing leaf noises its own input.

    std: what one contributor adds, per coordinate, in the float domain of its weighted
        contribution (`privacy.noise_std("distributed", sigma, C, floor, w_max)`), so any sum
        that secure aggregation unmasks (at least the privacy floor of inputs) carries sigma*C*w_max.
    sample: (n, sigma_int) -> int64 array of n discrete Gaussian samples with std sigma_int
        (`privacy.SecureNoise.discrete_gaussian`); the noise goes on the fixed-point integers,
        so masking and noise compose exactly.
    """

    std: float
    sample: Callable[[int, float], np.ndarray]

    def headroom(self, contributors: int) -> float:
        """Extra fixed-point clip bound for the noise of a sum of `contributors` inputs."""
        return HEADROOM_STDS * self.std * math.sqrt(max(contributors, 1))


def fedavg_error_bound(enc: FixedPoint, contributors: int, total_weight: float, magnitude: float) -> float:
    """Bound on |secure FedAvg average - exact weighted average| (before the float32 rounding).

    avg = (w_h own + S_x) / (w_h + S_w) with S_x, S_w each within e = enc.sum_error_bound(m)
    of exact: |error| <= e (1 + |avg|) / (W - e), W = w_h + sum of the contributors' weights.
    """
    e = enc.sum_error_bound(contributors)
    return e * (1.0 + magnitude) / (total_weight - e)


class SecureFedAvgRound(SecAggRound):
    """Star FedAvg with secure aggregation: the hub learns only sum_u w_u [x_u, 1], w_u = n_u / max_samples.

    Same constructor as `FedAvgRound` plus params, secret, rng and `expected` (leaves the hub's
    share phase waits for; default all). The hub adds its own model
    in plain, divides by the total weight and sends the average to every leaf as
    `Kind.GLOBAL` with tensor "delta"; on failure it sends "abort" and everyone keeps `fallback`
    (default: its own model) this round. The hub never sends a model that is not mixed with
    at least `min_contributors` leaves' sum: with fewer active leaves (none included; everyone
    knows the active set) every party fails the round with "privacy_floor" at once, the hub
    sends nothing and each keeps its `fallback`. A leaf's phase advances on every message from the hub and on every
    deadline; it gives up (keeps `fallback`) after `params.patience` silent deadlines.

    active: the leaves that contribute this round (`protocols.Schedule`; default all): only they
        form the secure-aggregation group; the others just wait for the average (or the abort).
    samples: the hub may pass 0 (its own data sits this round out).
    dp: distributed DP noise every contributing leaf adds to its encoded input (not to the
        weight coordinate); the fixed-point range gets `dp.headroom` more room so the noisy
        sum never wraps. Every party computes the same encoding from public facts.
    """

    def __init__(
        self,
        node_id: int,
        round_: int,
        hub: int,
        leaves: Iterable[int],
        own: np.ndarray,
        samples: int,
        params: SecAggParams | None = None,
        secret: SecretFn | None = None,
        rng: RandomFn = os.urandom,
        expected: Iterable[int] | None = None,
        active: Iterable[int] | None = None,
        fallback: np.ndarray | None = None,
        dp: DistributedNoise | None = None,
    ) -> None:
        super().__init__(node_id, round_, own, params, secret, rng)
        self.hub = hub
        least = 0 if self.is_hub else 1
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < least:
            raise ValueError(f"samples must be an integer >= {least}, not {samples!r}")
        self.leaves = sorted(set(leaves) - {hub})
        self.active = self.leaves if active is None else sorted(set(active) & set(self.leaves))
        self.fallback = self.own if fallback is None else fallback
        self.samples = samples
        self.weight = min(samples, self.params.max_samples) / self.params.max_samples
        self._result: np.ndarray | None = None
        self._events = 0  # a leaf's phase: one per message from the hub and per deadline
        m = len(self.active)
        self._length = self.own.shape[0] + 1  # the weight rides as one more coordinate
        self.dp = dp
        room = dp.headroom(m) if dp is not None else 0.0
        self.enc = FixedPoint(max(self.params.clip, 1.0) + room, float(max(m, 1)), max(m, 1), self.params.bits)
        if self.is_hub:
            self._hub_setup(expected)
        else:
            self._leaf_setup()

    def _group(self) -> GroupSpec:
        return GroupSpec(self.round, self.hub, self.active, self._length, self.enc, self.params)

    def _hub_setup(self, expected: Iterable[int] | None) -> None:
        m, floor = len(self.active), self.params.min_contributors
        if m < floor:
            # The hub's answer would be its own model, or the one leaf's input: send nothing.
            self.failures.append(Failure(self.hub, "aggregator", "privacy_floor", f"{m} leaf/leaves, floor {floor}"))
            self._result = self._hub_alone() if m == 0 else self.fallback
        else:
            self.agg = Aggregator(self._group(), expected)

    def _leaf_setup(self) -> None:
        m, floor = len(self.active), self.params.min_contributors
        if self.node_id not in self.leaves:
            raise ValueError(f"node {self.node_id} is neither the hub nor a leaf")
        if m < floor:  # the hub sends no average this round (none at all when m = 0)
            self._fail_member(self.hub, "privacy_floor", f"{m} leaf/leaves, floor {floor}")
            self._result = self.fallback
        elif self.node_id in self.active:
            self.members[self.hub] = Member(self._group(), self.node_id, self.weight, self._extended_input(),
                                            self._secret, self._rng, self._noise())

    def _extended_input(self) -> np.ndarray:
        """[clip(x), 1]: the leaf's clipped model and the unit its weight multiplies."""
        clip = self.params.clip
        x, self.clipped = sanitize(self.own, clip)
        ext = np.empty(self._length, dtype=np.float32)
        np.clip(x, -clip, clip, out=ext[:-1])
        ext[-1] = 1.0
        return ext

    def _noise(self) -> NoiseFn | None:
        dp = self.dp
        if dp is None:
            return None
        sigma_int, n = dp.std * self.enc.scale, self._length - 1

        def noise() -> np.ndarray:  # the weight coordinate stays exact
            return np.append(dp.sample(n, sigma_int), np.int64(0))

        return noise

    def _hub_alone(self) -> np.ndarray:
        """No leaf takes part: what the hub keeps (it is never sent). Its own model, or
        `fallback` if its data sits out too or under DP (its term is protected only by the
        leaves' noise, so the un-noised model must not become its state)."""
        return self.own if self.weight > 0 and self.dp is None else self.fallback

    @property
    def is_hub(self) -> bool:
        return self.node_id == self.hub

    def start(self) -> list[Outbound]:
        if self.agg is not None:
            return self._after_hub(False, self.agg.start())
        # Below the floor the hub sends nothing: every leaf knows the active set and has failed
        # the round already. (It used to send its own model when no leaf took part.)
        return [m.start() for m in self.members.values()]

    def on_message(self, msg: Message) -> list[Outbound]:
        if msg.round != self.round:
            raise Rejected("wrong_round", f"round {msg.round}, expected {self.round}")
        return self._hub_message(msg) if self.is_hub else self._leaf_message(msg)

    # hub ----------------------------------------------------------------------
    def _hub_message(self, msg: Message) -> list[Outbound]:
        if msg.kind != Kind.SECAGG:
            raise Rejected("unexpected_kind", f"{msg.kind.name} sent to the secure hub")
        step, body = step_of(msg)
        if step not in AGGREGATOR_STEPS:
            raise Rejected("out_of_order", f"{step} sent to the hub")
        if self.agg is None:
            raise Rejected("no_group", "the hub aggregates nothing this round")
        was_done = self.agg.done
        return self._after_hub(was_done, self._agg_step(step, msg, body))

    def _after_hub(self, was_done: bool, out: list[Outbound]) -> list[Outbound]:
        """When the group ends: the average to every leaf, or every leaf's final word on the failure."""
        agg = self.agg
        if agg is None or was_done or not agg.done:
            return out
        if agg.failure is not None:
            return self._hub_failed(out)
        assert agg.sum is not None
        s = agg.sum
        w_total = self.weight + s[-1]
        avg = (self.weight * self.own.astype(np.float64) + s[:-1]) / w_total
        self._result = avg.astype(np.float32)
        msg = Message(Kind.GLOBAL, self.node_id, self.round, tensors={DELTA: self._result})
        return out + [(j, msg) for j in self.leaves]

    def _hub_failed(self, out: list[Outbound]) -> list[Outbound]:
        """Every leaf waits for a final word: the aggregator role told the members still in a
        step (`GroupFailure.told`); every other leaf gets the same abort instead of whatever
        this call had for it (an "excluded" notice, say)."""
        assert self.agg is not None and self.agg.failure is not None
        failure = self.agg.failure
        self.failures.append(Failure(self.node_id, "aggregator", failure.reason, failure.detail))
        self._result = self.fallback
        msg = secagg_message(self.node_id, self.round, Abort(failure.reason))
        return [o for o in out if o[0] in failure.told] + [(j, msg) for j in self.leaves if j not in failure.told]

    # leaf ---------------------------------------------------------------------
    def _leaf_message(self, msg: Message) -> list[Outbound]:
        if msg.sender != self.hub:
            raise Rejected("not_neighbour", f"message from {msg.sender} at a leaf")
        if self._result is not None:
            raise Rejected("late", f"{msg.kind.name} after the leaf finished")
        if msg.kind == Kind.GLOBAL:
            self._result = check_vector(msg, DELTA, self.own.shape[0])
            for m in self.members.values():
                if not m.done:
                    m.take_global()
            return []
        if msg.kind != Kind.SECAGG:
            raise Rejected("unexpected_kind", f"{msg.kind.name} at a secure leaf")
        step, body = step_of(msg)
        if step not in MEMBER_STEPS:
            raise Rejected("out_of_order", f"{step} sent to a leaf")
        if step == STEP_ABORT:
            return self._leaf_abort(Abort.decode(body).reason)
        if self.hub not in self.members:
            raise Rejected("no_group", "this leaf takes no part this round")
        out = self._member_step(step, msg, body)
        self._hear_hub()
        return out

    def _leaf_abort(self, reason: str) -> list[Outbound]:
        """The hub's abort. "excluded": this leaf's input is out, but the average still comes;
        anything else: the round failed, keep the fallback. A leaf that sits out hears only the latter."""
        m = self.members.get(self.hub)
        if m is None:
            self._fail_member(self.hub, "aborted", reason)
            self._result = self.fallback
            return []
        if m.done and reason == "excluded":
            raise Rejected("duplicate", "second exclusion notice")
        if not m.done:
            m.abort(reason)
        self._fail_member(self.hub, "aborted", reason)
        self._hear_hub()
        if reason != "excluded":
            self._result = self.fallback
        return []

    def peer_restarted(self, j: int) -> list[Outbound]:
        """The hub: a restarted leaf's old process owes nothing more, so the group stops waiting
        for it (`Aggregator.process_gone`). A leaf: a restarted hub's new process holds nothing of
        this round, so no average will come: it keeps its fallback at once. A leaf that has not
        shared yet (stage new: the restart came between rounds) goes on, with the new process."""
        self.replaced.add(j)
        if self.is_hub:
            agg = self.agg
            if agg is None or agg.done or j not in agg.spec.members:
                return []
            return self._after_hub(False, agg.process_gone(j))
        m = self.members.get(j)
        if j != self.hub or self._result is not None or m is None or m.stage is MemberStage.NEW:
            return []
        m.abort("restarted")
        self._fail_member(self.hub, "aborted", "restarted")
        self._result = self.fallback
        return []

    def _group_changed(self, out: list[Outbound]) -> list[Outbound]:
        return self._after_hub(False, out)

    def _hear_hub(self) -> None:
        self._events += 1
        self._idle[self.hub] = 0

    def on_deadline(self) -> list[Outbound]:
        if self.is_hub:
            if self.agg is None or self.agg.done:
                return []
            self.deadlines += 1
            return self._after_hub(False, self.agg.on_deadline() + self._cap_aggregator())
        if self._result is not None:
            return []
        self.deadlines += 1
        self._events += 1
        idle = self._idle[self.hub] = self._idle.get(self.hub, 0) + 1
        if idle >= self.params.patience or self.deadlines >= self.params.max_deadlines:
            for m in self.members.values():
                if not m.done:
                    m.give_up()
            self._fail_member(self.hub, "member_timeout", f"no message from the hub for {idle} deadlines")
            self._result = self.fallback
        return []

    @property
    def phase(self) -> int:
        if self.is_hub:
            return int(self.agg.stage) if self.agg is not None else int(AggStage.DONE)
        return self._events

    def finished(self) -> bool:
        return self._result is not None

    def result(self) -> np.ndarray:
        assert self._result is not None, "result() before the round finished"
        return self._result

    def heard(self) -> list[int]:
        if self.is_hub:
            return self.contributors
        return [self.hub] if self._result is not None and self._result is not self.fallback else []

    @property
    def status(self) -> str:
        """"pending", "ok" (hub: unmasked the sum; leaf: got the average) or "failed" (see `failures`)."""
        if self._result is None:
            return "pending"
        if self.is_hub:
            return "ok" if not self.leaves or (self.agg is not None and self.agg.ok) else "failed"
        return "ok" if self.arrived() else "failed"

    @property
    def failure_reason(self) -> str | None:
        return self.failures[0].reason if self.failures else None

    @property
    def contributors(self) -> list[int]:
        return list(self.agg.u2) if self.agg is not None and self.agg.ok else []
