"""Secure aggregation round protocols, driven by an in-memory router (no sockets).

Pairwise static secrets are real X25519 agreements made with pynacl, as `crypto` will provide.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_scalarmult
from nacl.public import PrivateKey

from p2pfl.masking import blake2b, mask_vector, pair_seed, pairwise_sign
from p2pfl.messages import Kind, Message
from p2pfl.protocols import FedAvgRound, GossipRound, Rejected, RoundProtocol, mix
from p2pfl.fixedpoint import FixedPoint
from p2pfl.secagg import (
    MASKED,
    AggStage,
    GroupSpec,
    MemberStage,
    SecAggParams,
    SecureFedAvgRound,
    SecureGossipRound,
    fedavg_error_bound,
)

# --------------------------------------------------------------------------- helpers


def make_secrets(ids) -> dict[int, Callable[[int, bytes], bytes]]:
    keys = {i: PrivateKey.generate() for i in ids}

    def for_node(i: int):
        def secret(peer: int, context: bytes) -> bytes:
            shared = crypto_scalarmult(bytes(keys[i]), bytes(keys[peer].public_key))
            return blake2b(context, person=b"test-pairwise", key=shared)

        return secret

    return {i: for_node(i) for i in ids}


def seeded_rng(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def circulant(n: int, offsets=(1,)) -> dict[int, list[int]]:
    return {i: sorted({(i + o) % n for o in offsets} | {(i - o) % n for o in offsets}) for i in range(n)}


def mh_weights(adj: dict[int, list[int]]) -> dict[int, dict[int, float]]:
    return {i: {j: 1.0 / (1 + max(len(adj[i]), len(adj[j]))) for j in adj[i]} for i in adj}


def step_of(msg: Message) -> str | None:
    return msg.meta.get("step") if msg.kind == Kind.SECAGG else None


class Router:
    """Delivers messages between protocol objects; nodes can crash, messages can be held.

    crash_before[node] = step: the node vanishes the first time it tries to send that step
    ("shares": before sharing, "masked": after sharing, "reveal": after its masked input);
    what it sends in that batch and later is lost, and nothing reaches it any more.
    hold(to, msg) -> True keeps a message back until `release()`.
    When no message is in flight, every unfinished live node's deadline passes.
    """

    def __init__(self, protos: dict[int, RoundProtocol], crash_before: dict[int, str] | None = None, hold=None) -> None:
        self.protos = protos
        self.crash_before = dict(crash_before or {})
        self.dead: set[int] = set()
        self.hold = hold or (lambda to, msg: False)
        self.held: list[tuple[int, Message]] = []
        self.queue: deque[tuple[int, Message]] = deque()
        self.rejected: list[tuple[int, Message, str]] = []
        self.deadlines = 0
        self.delivered = 0

    def post(self, sender: int, outs) -> None:
        if sender in self.dead:
            return
        outs = list(outs)
        if sender in self.crash_before and any(step_of(m) == self.crash_before[sender] for _, m in outs):
            self.dead.add(sender)
            return
        self.queue.extend(outs)

    def start(self) -> Router:
        for i, p in self.protos.items():
            if self.crash_before.get(i) == "shares":
                self.dead.add(i)
            else:
                self.post(i, p.start())
        return self

    def deliver(self) -> None:
        while self.queue:
            to, msg = self.queue.popleft()
            if to in self.dead:
                continue
            if self.hold(to, msg):
                self.held.append((to, msg))
                continue
            self.delivered += 1
            try:
                self.post(to, self.protos[to].on_message(msg))
            except Rejected as exc:
                self.rejected.append((to, msg, exc.reason))
                self.post(to, exc.reply)  # as the node does: the drop is counted, the reply still goes out

    def release(self) -> None:
        self.queue.extend(self.held)
        self.held = []
        self.hold = lambda to, msg: False
        self.deliver()

    def run(self, max_deadlines: int = 20) -> Router:
        self.start()
        self.settle(max_deadlines)
        return self

    def alive(self) -> list[int]:
        return [i for i in self.protos if i not in self.dead]

    def settle(self, max_deadlines: int = 20) -> None:
        self.deliver()
        while any(not self.protos[i].finished() for i in self.alive()):
            assert self.deadlines < max_deadlines, "protocol did not finish"
            self.deadlines += 1
            for i in self.alive():
                if not self.protos[i].finished():
                    self.post(i, self.protos[i].on_deadline())
            self.deliver()


def gossip_cluster(adj, L=300, seed=0, params=None, scale=1.0):
    rng = np.random.default_rng(seed)
    xs = {i: (rng.standard_normal(L) * scale).astype(np.float32) for i in adj}
    W = mh_weights(adj)
    sec = make_secrets(adj)
    params = params or SecAggParams()
    protos = {i: SecureGossipRound(i, 4, adj, W[i], xs[i], params, sec[i], seeded_rng(seed * 1000 + i)) for i in adj}
    return protos, xs, W


def exact_mix(i, xs, W, contributors) -> np.ndarray:
    own = xs[i].astype(np.float64)
    return own + sum(W[i][u] * (xs[u].astype(np.float64) - own) for u in contributors)


def assert_within_bound(p: SecureGossipRound, xs, W) -> None:
    exact = exact_mix(p.node_id, xs, W, p.contributors)
    bound = p.quantization_bound() + 2.0**-24 * np.abs(exact).max() + 1e-12
    assert np.abs(p.result().astype(np.float64) - exact).max() <= bound


# --------------------------------------------------------------------------- gossip: correctness


def test_surplus_reveal_after_release_is_taken_quietly() -> None:
    # groups of 4, t = 3: an aggregator unmasks with 3 reveals; the 4th may reach it only after the
    # node released the round's arrays and moved on (node.py keeps the finished round for this)
    adj = circulant(8, (1, 2))
    protos, xs, W = gossip_cluster(adj, seed=5)
    router = Router(protos, hold=lambda to, m: m.sender == 0 and step_of(m) == "reveal").run()
    assert all(p.finished() and p.status == "ok" for p in protos.values())
    results = {i: p.result().copy() for i, p in protos.items()}
    for p in protos.values():
        p.release()
        assert p.agg is not None and p.agg.sum is None and all(m.x is None for m in p.members.values())
    held = len(router.held)
    assert held == len(adj[0])  # node 0's reveals, one per neighbour's group
    router.release()
    assert router.delivered >= held and not router.rejected
    assert all(np.array_equal(results[i], p.result()) for i, p in protos.items())
    for i, p in protos.items():
        np.testing.assert_allclose(p.result(), exact_mix(i, xs, W, adj[i]), atol=1e-5)


def test_ring_of_8_matches_plain_gossip_within_bound() -> None:
    adj = circulant(8)
    protos, xs, W = gossip_cluster(adj, L=2000)
    router = Router(protos).run()
    assert router.deadlines == 0 and not router.rejected  # no dropouts: completes without timeouts
    plain = {i: GossipRound(i, 4, W[i], xs[i]) for i in adj}
    Router(plain).run()
    for i, p in protos.items():
        assert p.finished() and p.status == "ok" and p.arrived() == 2 and p.failures == []
        assert p.contributors == adj[i]
        assert_within_bound(p, xs, W)
        ref = plain[i].result()
        mag = float(np.abs(ref).max())
        # GossipRound itself rounds in float32 (a few ulps per term)
        assert np.abs(p.result() - ref).max() <= p.quantization_bound() + 8 * 2.0**-24 * mag


def test_masked_input_on_the_wire_is_uint32_and_looks_uniform() -> None:
    adj = circulant(4)
    seen = []
    protos, xs, W = gossip_cluster(adj, L=4096)
    router = Router(protos, hold=lambda to, m: seen.append(m) or False).run()
    masked = [m for m in seen if step_of(m) == "masked"]
    assert masked and router.deadlines == 0
    for m in masked:
        vec = m.tensors[MASKED]
        assert vec.dtype == np.uint32 and vec.nbytes == xs[m.sender].nbytes  # 1.0x the float32 size
        b = vec.view(np.uint8).reshape(-1, 4)
        for pos in range(4):
            counts = np.bincount(b[:, pos], minlength=256)
            exp = b.shape[0] / 256
            assert ((counts - exp) ** 2 / exp).sum() < 400  # chi2(255) 1e-6 tail is ~370
    # and the plain encoding is far from uniform (the check would catch an unmasked vector)
    enc = protos[0].agg.spec.enc
    q, _ = enc.encode(xs[1], 0.3)
    counts = np.bincount(q.view(np.uint8).reshape(-1, 4)[:, 3], minlength=256)
    assert ((counts - 16) ** 2 / 16).sum() > 10_000


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(4, 8), p_edge=st.floats(0.3, 0.9), seed=st.integers(0, 10_000))
def test_secure_aggregate_equals_plain_mix_on_random_graphs(n: int, p_edge: float, seed: int) -> None:
    import networkx as nx

    g = nx.gnp_random_graph(n, p_edge, seed=seed)
    adj = {i: sorted(g[i]) for i in g}
    protos, xs, W = gossip_cluster(adj, L=64, seed=seed, scale=3.0)
    Router(protos).run()
    for i, p in protos.items():
        assert p.finished()
        if len(adj[i]) < 2:
            assert p.status == "failed" and p.failure_reason == "privacy_floor"
            assert np.array_equal(p.result(), xs[i])
        else:
            assert p.status == "ok" and p.contributors == adj[i]
            assert_within_bound(p, xs, W)
            plain = mix(xs[i], {j: (W[i][j], xs[j]) for j in adj[i]})
            assert np.abs(p.result() - plain).max() <= p.quantization_bound() + 16 * 2.0**-24 * float(np.abs(plain).max())


def test_values_beyond_clip_are_clipped_and_counted() -> None:
    adj = circulant(5)
    params = SecAggParams(clip=1.0)
    protos, xs, W = gossip_cluster(adj, L=100, params=params, scale=2.0)
    Router(protos).run()
    for i, p in protos.items():
        assert p.clipped == int(np.count_nonzero(np.abs(xs[i]) > 1.0)) > 0
        own = xs[i].astype(np.float64)
        exact = own + sum(W[i][u] * (np.clip(xs[u].astype(np.float64), -1, 1) - own) for u in adj[i])
        assert np.abs(p.result() - exact).max() <= p.quantization_bound() + 2.0**-24 * np.abs(exact).max()


# --------------------------------------------------------------------------- gossip: dropouts


@pytest.mark.parametrize("stage,verify", [("shares", True), ("masked", True), ("reveal", True),
                                          ("shares", False), ("masked", False), ("reveal", False)])
def test_dropout_at_each_stage_recovers_in_degree_4_groups(stage: str, verify: bool) -> None:
    # (no view here needs confirming: the views that drop 3 are those of groups 3 left before
    # its masked input, and a member that sent it is never dropped; see the test below)
    adj = circulant(8, (1, 2))  # every group has 4 members, t = 3
    protos, xs, W = gossip_cluster(adj, L=500, seed=7, params=SecAggParams(verify_views=verify))
    router = Router(protos, crash_before={3: stage}).run()
    for i in router.alive():
        p = protos[i]
        assert p.finished() and p.status == "ok", (i, p.failures)
        if 3 in adj[i]:
            expected = adj[i] if stage in ("confirm", "reveal") else [u for u in adj[i] if u != 3]
            assert p.contributors == expected
            agg = p.agg
            if stage == "masked":  # 3 shared, then vanished: its pairwise masks were removed
                assert set(agg.revealed_mask) == {3} and 3 not in agg.revealed_self
            if stage in ("confirm", "reveal"):  # 3's input counted although it never answered
                assert 3 in agg.revealed_self and not agg.revealed_mask
            assert not set(agg.revealed_self) & set(agg.revealed_mask)
        else:
            assert p.contributors == adj[i]
        assert_within_bound(p, xs, W)
    # members of the dead node's own group gave up on it after `patience` deadlines (with
    # stage "reveal" node 3 had already collected their reveals before vanishing)
    for i in adj[3]:
        assert protos[i].members[3].done
        timed_out = any(f.group == 3 and f.reason == "member_timeout" for f in protos[i].failures)
        assert timed_out == (stage != "reveal")


def test_dropout_before_confirming_a_view_that_drops_someone() -> None:
    # K_6 (groups of 5, t = T = 3): node 5 vanishes before its masked inputs, so every view drops
    # it and must be confirmed; node 4 vanishes before confirming. Three confirmers suffice.
    adj = {i: [j for j in range(6) if j != i] for i in range(6)}
    protos, xs, W = gossip_cluster(adj, L=300, seed=17)
    seen: list[str] = []
    router = Router(protos, crash_before={5: "masked", 4: "confirm"}, hold=lambda to, m: seen.append(step_of(m)) or False).run()
    assert "confirm" in seen and "proof" in seen
    for i in router.alive():
        p = protos[i]
        assert p.status == "ok" and p.contributors == [u for u in adj[i] if u != 5], (i, p.failures)
        assert p.agg.confirmers == [u for u in adj[i] if u not in (4, 5)]
        assert set(p.agg.revealed_mask) == {5} and 4 in p.agg.revealed_self  # 4's input counted
        assert_within_bound(p, xs, W)


def test_two_dropouts_in_a_group_of_4_fail_safely() -> None:
    adj = circulant(8, (1, 2))
    protos, xs, W = gossip_cluster(adj, L=200, seed=8)
    router = Router(protos, crash_before={3: "reveal", 4: "reveal"}).run()
    for i in router.alive():
        p = protos[i]
        if 3 in adj[i] and 4 in adj[i]:  # nodes 2 and 5: two of four members never answer
            assert p.status == "failed" and p.failure_reason == "too_few_reveals"
            assert np.array_equal(p.result(), xs[i]) and p.arrived() == 0
            assert p.agg.sum is None and not p.agg.revealed_self and not p.agg.revealed_mask
        else:
            assert p.status == "ok"
            assert_within_bound(p, xs, W)


@pytest.mark.parametrize("stage,reason", [("masked", "privacy_floor"), ("shares", "too_few_members")])
def test_privacy_floor_fails_a_two_member_group_with_one_dropout(stage: str, reason: str) -> None:
    adj = circulant(8)  # ring: every group has 2 members
    protos, xs, W = gossip_cluster(adj, L=100, seed=9)
    seen: list[tuple[int, Message]] = []
    router = Router(protos, crash_before={3: stage}, hold=lambda to, m: seen.append((to, m)) or False).run()
    for i in (2, 4):
        p = protos[i]
        assert p.status == "failed" and p.failure_reason == reason
        assert np.array_equal(p.result(), xs[i]) and p.arrived() == 0 and p.contributors == []
        # the lone survivor's input was never unmasked: no unmask request was ever sent
        assert not any(m.sender == i and step_of(m) == "unmask" for _, m in seen)
        assert p.agg.sum is None and not p.agg.revealed_self
    for i in (0, 1, 5, 6, 7):
        assert protos[i].status == "ok"
        assert_within_bound(protos[i], xs, W)
    assert router.dead == {3}


def test_path_ends_and_stars_refuse_single_member_groups() -> None:
    adj = {0: [1], 1: [0, 2], 2: [1]}  # a path: the ends have one neighbour
    protos, xs, W = gossip_cluster(adj, L=50)
    Router(protos).run()
    assert protos[1].status == "ok" and protos[1].contributors == [0, 2]
    for i in (0, 2):
        assert protos[i].status == "failed" and protos[i].failure_reason == "privacy_floor"
        assert np.array_equal(protos[i].result(), xs[i])


def test_late_masked_input_of_a_dropped_member_cannot_be_unmasked() -> None:
    adj = circulant(8, (1, 2))
    protos, xs, W = gossip_cluster(adj, L=4096, seed=11)
    agg_node, late = 2, 3
    router = Router(protos, hold=lambda to, m: to == agg_node and m.sender == late and step_of(m) == "masked")
    router.start()
    router.deliver()
    assert len(router.held) == 1 and protos[agg_node].phase == 1
    # the aggregator's masked-input deadline passes: 3 is declared dropped
    router.post(agg_node, protos[agg_node].on_deadline())
    router.deliver()
    p = protos[agg_node]
    assert p.status == "ok" and p.contributors == [0, 1, 4]
    assert_within_bound(p, xs, W)
    agg = p.agg
    assert late in agg.revealed_mask and late not in agg.revealed_self
    assert not set(agg.revealed_self) & set(agg.revealed_mask)
    # the late input now arrives: refused
    late_msg = router.held[0][1]
    with pytest.raises(Rejected) as exc:
        p.on_message(late_msg)
    assert exc.value.reason == "late"
    # even using everything the aggregator holds, the late input stays masked by b_3
    vec = late_msg.tensors[MASKED].copy()
    masks = []
    for v in sorted(agg.spec.graph[late]):
        shared = crypto_scalarmult(agg.revealed_mask[late], agg.pks[v])
        masks.append((pair_seed(shared, agg.spec.round, agg_node, late, v), -pairwise_sign(late, v)))
    mask_vector(vec, masks, agg.spec.round, agg_node)
    enc_true, _ = agg.spec.enc.encode(xs[late], W[agg_node][late])
    assert np.count_nonzero(vec == enc_true) < 10
    counts = np.bincount(vec.view(np.uint8).reshape(-1, 4)[:, 3], minlength=256)
    assert ((counts - 16) ** 2 / 16).sum() < 400  # still uniform
    # and no member hands out b_3 any more: each answered once, and 3 withheld its own c share
    member = protos[0].members[agg_node]
    assert member.done
    forged = Message(Kind.SECAGG, agg_node, 4, meta={"step": "unmask", "body": msgpack.packb({"survivors": [0, 1, 3, 4], "dropped": []})})
    with pytest.raises(Rejected):
        protos[0].on_message(forged)
    router.settle()
    assert all(protos[i].status == "ok" for i in adj)


# --------------------------------------------------------------------------- member-side refusals


def _group_paused_at(step: str, seed=12, n=5):
    """K_n (groups of n-1); node 0's messages of `step` are held back."""
    adj = {i: [j for j in range(n) if j != i] for i in range(n)}
    protos, xs, W = gossip_cluster(adj, L=64, seed=seed)
    router = Router(protos, hold=lambda to, m: m.sender == 0 and step_of(m) == step)
    router.start()
    router.deliver()
    assert len(router.held) == n - 1
    return protos, router, xs, W


def _from_agg(step: str, body: dict, sender=0, round_=4) -> Message:
    return Message(Kind.SECAGG, sender, round_, meta={"step": step, "body": msgpack.packb(body)})


def _unmask_for(router: Router, member: int, survivors, dropped) -> Message:
    """An unmask request to `member` for any view, with the genuine attestations the aggregator holds."""
    real = next(m for to, m in router.held if to == member and step_of(m) == "unmask")
    attest = msgpack.unpackb(real.meta["body"], strict_map_key=False)["attest"]
    return _from_agg("unmask", {"survivors": survivors, "dropped": dropped, "attest": {w: attest[w] for w in survivors if w in attest}, "next": None})


@pytest.mark.parametrize(
    "survivors,dropped",
    [
        ([1, 2, 3, 4], [2]),  # both secrets of 2
        ([1, 2], [2, 3, 4]),  # same, dressed up
        ([1], [2, 3, 4]),  # below the privacy floor
        ([1, 2, 3], []),  # not a partition of the members
        ([1, 2, 3, 4, 9], []),  # a stranger
    ],
)
def test_member_refuses_unsafe_unmask_requests(survivors, dropped) -> None:
    protos, router, *_ = _group_paused_at("unmask")
    with pytest.raises(Rejected) as exc:
        protos[1].on_message(_unmask_for(router, 1, survivors, dropped))
    assert exc.value.reason == "refused"
    assert protos[1].members[0].stage is MemberStage.MASKED  # a refused request changes nothing


def test_member_confirms_one_view_only_and_reveals_only_with_a_quorum() -> None:
    protos, router, xs, W = _group_paused_at("unmask")
    # a (malicious) aggregator first shows member 1 a different view
    out = protos[1].on_message(_unmask_for(router, 1, [1, 2, 3], [4]))
    assert len(out) == 1 and step_of(out[0][1]) == "confirm"
    with pytest.raises(Rejected) as exc:
        protos[1].on_message(_unmask_for(router, 1, [1, 2, 3, 4], []))
    assert exc.value.reason == "duplicate"
    # forged confirmations do not count
    fake = {u: bytes(16) for u in (2, 3, 4)}
    with pytest.raises(Rejected) as exc:
        protos[1].on_message(_from_agg("proof", {"macs": fake, "next": None}))
    assert exc.value.reason == "refused"
    router.post(1, out)  # member 1's confirmation reaches the aggregator, which asked for none:
    router.release()  # its real view drops no one; the others reveal for it at once, 1 refuses it
    router.settle()
    assert any(to == 0 and step_of(m) == "confirm" and reason == "late" for to, m, reason in router.rejected)
    assert any(to == 1 and step_of(m) == "unmask" and reason == "duplicate" for to, m, reason in router.rejected)
    p = protos[0]
    assert p.status == "ok" and p.contributors == [1, 2, 3, 4]  # the honest quorum {2, 3, 4} sufficed
    assert p.agg.responded == {2, 3, 4}
    assert_within_bound(p, xs, W)


def test_inconsistent_views_from_a_malicious_aggregator_reveal_nothing() -> None:
    # the attack the confirmation step exists for: show each member a different view so that
    # b_1 and the mask keys c of all of 1's partners each reach t shares
    protos, router, *_ = _group_paused_at("unmask", n=6)
    views = {1: ([1, 2], [3, 4, 5]), 2: ([1, 3], [2, 4, 5]), 3: ([1, 3], [2, 4, 5]), 4: ([1, 4], [2, 3, 5]), 5: ([1, 5], [2, 3, 4])}
    macs = {}
    for m, (surv, drop) in views.items():
        out = protos[m].on_message(_unmask_for(router, m, surv, drop))
        macs[m] = msgpack.unpackb(out[0][1].meta["body"], strict_map_key=False)["macs"]
    for m in views:  # forward every confirmation the aggregator holds
        with pytest.raises(Rejected) as exc:
            protos[m].on_message(_from_agg("proof", {"macs": {u: macs[u][m] for u in views if u != m}, "next": None}))
        assert exc.value.reason == "refused"
        assert protos[m].members[0].stage is MemberStage.CONFIRMED  # nothing revealed


@pytest.mark.parametrize("n,dropped,verify,needed", [
    (5, [], True, False),  # dense, drops no one: only self-mask shares are asked for
    (5, [3], True, True),  # drops someone: confirmed
    (14, [], True, True),  # sparse (n > sparse_above): t(u) counts u's holders only, below T
    (5, [3], False, False),  # the semi-honest variant confirms nothing
])
def test_which_views_need_confirming(n: int, dropped: list[int], verify: bool, needed: bool) -> None:
    spec = GroupSpec(4, 0, range(1, n + 1), 8, FixedPoint(1.0, 1.0, n, 32), SecAggParams(verify_views=verify))
    assert spec.sparse == (n > spec.params.sparse_above)
    if not spec.sparse:  # the reason skipping is safe there: every t(u) is the quorum
        assert all(spec.threshold(u) == spec.quorum for u in spec.members)
    assert spec.needs_confirmation(dropped) == needed


def test_an_unconfirmed_view_that_drops_no_one_does_not_help_an_inconsistent_aggregator() -> None:
    # K_6, node 0's group {1..5}, t = T = 3. The aggregator shows 1, 2, 3 the view that drops no
    # one (they reveal the self-mask shares b at once, b_1 can be rebuilt) and 4, 5 a view that
    # drops all of 1's partners (it needs c_2..c_5 too). That view needs 3 confirmations; 1, 2, 3
    # have already revealed and confirm nothing more, so it never gets them.
    protos, router, *_ = _group_paused_at("unmask", n=6)
    for m in (1, 2, 3):
        out = protos[m].on_message(_unmask_for(router, m, [1, 2, 3, 4, 5], []))
        assert [step_of(o) for _, o in out] == ["reveal"]
        body = msgpack.unpackb(out[0][1].meta["body"], strict_map_key=False)
        assert set(body["self"]) == {1, 2, 3, 4, 5} and body["mask"] == {}
    macs = {}
    for m in (4, 5):
        out = protos[m].on_message(_unmask_for(router, m, [1, m], sorted({2, 3, 4, 5} - {m})))
        assert [step_of(o) for _, o in out] == ["confirm"]
        macs[m] = msgpack.unpackb(out[0][1].meta["body"], strict_map_key=False)["macs"]
    for m in (1, 2, 3):  # those that revealed cannot be brought to confirm the other view
        with pytest.raises(Rejected) as exc:
            protos[m].on_message(_unmask_for(router, m, [1, 4], [2, 3, 5]))
        assert exc.value.reason == "late"
    for m in (4, 5):  # with each other's confirmation only: 2 of the 3 needed
        other = 9 - m
        with pytest.raises(Rejected) as exc:
            protos[m].on_message(_from_agg("proof", {"macs": {other: macs[other][m]}, "next": None}))
        assert exc.value.reason == "refused"
        assert protos[m].members[0].stage is MemberStage.CONFIRMED  # no c share revealed


def test_a_member_masked_for_a_smaller_member_list_cannot_be_singled_out() -> None:
    # the aggregator gives member 1 a bundle listing only {1, 2, 3}, so 1 masks with 2 and 3
    # only; then it shows everyone else a view where 1 survived and 2, 3 dropped. Without the
    # members' attestations the others would reveal b_1, c_2 and c_3: all of 1's masks.
    protos, router, *_ = _group_paused_at("bundle", n=6)
    bundles = {to: m for to, m in router.held}
    real = msgpack.unpackb(bundles[1].meta["body"], strict_map_key=False)
    forged = _from_agg("bundle", {"members": [1, 2, 3], "ct": {w: real["ct"][w] for w in (2, 3)}})
    masked = {1: protos[1].on_message(forged)[0][1]}
    for v in (2, 3, 4, 5):
        masked[v] = protos[v].on_message(bundles[v])[0][1]
    attest = {w: msgpack.unpackb(m.meta["body"], strict_map_key=False)["attest"] for w, m in masked.items()}
    assert set(attest[1]) == {2, 3}
    survivors, dropped = [1, 4, 5], [2, 3]
    for v in (2, 3, 4, 5):
        body = {"survivors": survivors, "dropped": dropped, "attest": {w: attest[w][v] for w in survivors if w != v and v in attest[w]}, "next": None}
        with pytest.raises(Rejected) as exc:
            protos[v].on_message(_from_agg("unmask", body))
        assert exc.value.reason == "refused" and "attest" in str(exc.value)
        assert protos[v].members[0].stage is MemberStage.MASKED


def test_aggregator_refuses_reveals_beyond_its_request() -> None:
    protos, router, *_ = _group_paused_at("unmask")
    agg = protos[0].agg
    assert agg.stage is AggStage.REVEAL and agg.dropped == []
    share = b"\x00" * 65 + b"\x01"
    over = {"self": {1: share}, "mask": {2: share}}  # a c share nobody asked for
    msg = Message(Kind.SECAGG, 1, 4, meta={"step": "reveal", "body": msgpack.packb(over)})
    with pytest.raises(Rejected) as exc:
        protos[0].on_message(msg)
    assert exc.value.reason == "overreach" and not any(agg.mask_shares.values()) and 1 not in agg.responded
    router.release()
    router.settle()
    assert protos[0].status == "ok"


# --------------------------------------------------------------------------- strict validation


def test_malformed_and_out_of_order_messages_are_rejected_without_effect() -> None:
    adj = {i: [j for j in range(4) if j != i] for i in range(4)}
    protos, xs, W = gossip_cluster(adj, L=32, seed=13)
    starts = {i: protos[i].start() for i in adj}
    node = protos[0]
    shares_from_1 = next(m for to, m in starts[1] if to == 0)

    def sec(step, body, sender=1, round_=4, tensors=None, **meta):
        return Message(Kind.SECAGG, sender, round_, meta={"step": step, "body": body, **meta}, tensors=tensors or {})

    good = shares_from_1.meta["body"]
    masked_vec = np.zeros(32, np.uint32)
    cases = [
        (Message(Kind.MODEL, 1, 4, tensors={"delta": xs[1]}), "unexpected_kind"),
        (sec("shares", good, round_=5), "wrong_round"),
        (sec("shares", good, extra=1), "bad_meta"),
        (Message(Kind.SECAGG, 1, 4, meta={"step": "shares"}), "bad_meta"),
        (sec("hello", good), "unknown_step"),
        (sec("shares", good, tensors={MASKED: masked_vec}), "bad_tensor"),
        (sec("shares", b"\xc1garbage"), "bad_body"),
        (sec("shares", msgpack.packb({"pk": b"x" * 32})), "bad_body"),
        (sec("shares", msgpack.packb([1] * 10)), "bad_body"),
        (sec("shares", good, sender=7), "not_neighbour"),
        (sec("masked", msgpack.packb({}), tensors={MASKED: masked_vec}), "out_of_order"),
        (sec("reveal", msgpack.packb({"self": {}, "mask": {}})), "out_of_order"),
        (sec("unmask", msgpack.packb({"survivors": [0, 2, 3], "dropped": []})), "out_of_order"),
    ]
    for msg, reason in cases:
        with pytest.raises(Rejected) as exc:
            node.on_message(msg)
        assert exc.value.reason == reason, (msg.meta, exc.value)
    node.on_message(shares_from_1)
    with pytest.raises(Rejected) as exc:
        node.on_message(shares_from_1)
    assert exc.value.reason == "duplicate"
    # finish the round through the router, tampering with one bundle and some masked inputs on the way
    router = Router(protos)
    router.queue.extend(o for i in adj for o in starts[i] if not (i == 1 and o[0] == 0))
    tampered = []

    def tamper(to, m):
        if to == 2 and m.sender == 0 and step_of(m) == "bundle" and not tampered:
            body = msgpack.unpackb(m.meta["body"], strict_map_key=False)
            ct = bytearray(body["ct"][1])
            ct[-1] ^= 1
            body["ct"][1] = bytes(ct)
            bad = Message(m.kind, m.sender, m.round, meta={"step": "bundle", "body": msgpack.packb(body)})
            tampered.append(bad)
            with pytest.raises(Rejected) as exc:
                protos[2].on_message(bad)
            assert exc.value.reason == "decrypt_failed"
            body["members"] = [1, 3]
            with pytest.raises(Rejected):
                protos[2].on_message(Message(m.kind, m.sender, m.round, meta={"step": "bundle", "body": msgpack.packb(body)}))
        if to == 0 and step_of(m) == "masked" and m.sender == 3:
            for bad_vec in (m.tensors[MASKED].astype(np.float32), m.tensors[MASKED][:-1], m.tensors[MASKED].astype(np.int64)):
                with pytest.raises(Rejected) as exc:
                    protos[0].on_message(Message(m.kind, 3, 4, meta=m.meta, tensors={MASKED: bad_vec}))
                assert exc.value.reason == "bad_tensor"
        return False

    router.hold = tamper
    router.deliver()
    router.settle()
    assert tampered and router.deadlines == 0 and not router.rejected
    for i in adj:
        assert protos[i].status == "ok"
        assert_within_bound(protos[i], xs, W)


def test_constructor_validates_inputs() -> None:
    adj = circulant(4)
    sec = make_secrets(adj)
    W = mh_weights(adj)
    x = np.zeros(8, np.float32)
    with pytest.raises(ValueError):
        SecureGossipRound(0, 1, adj, W[0], x.astype(np.float64), secret=sec[0])
    with pytest.raises(ValueError):
        SecureGossipRound(0, 1, adj, {1: 0.9, 3: 0.9}, x, secret=sec[0])
    with pytest.raises(ValueError):
        SecureGossipRound(0, 1, {0: [1, 3], 1: [2], 3: [0, 2]}, W[0], x, secret=sec[0])
    with pytest.raises(ValueError):
        SecureGossipRound(0, 1, adj, W[0], x)
    with pytest.raises(ValueError):
        SecAggParams(threshold=0.4)
    with pytest.raises(ValueError):
        SecAggParams(min_contributors=1)


def test_nan_in_own_vector_is_sanitised_for_encoding() -> None:
    adj = circulant(3)
    rng = np.random.default_rng(0)
    xs = {i: rng.standard_normal(16).astype(np.float32) for i in adj}
    xs[1][3] = np.nan
    W = mh_weights(adj)
    sec = make_secrets(adj)
    protos = {i: SecureGossipRound(i, 1, adj, W[i], xs[i], secret=sec[i]) for i in adj}
    Router(protos).run()
    assert protos[1].clipped == 1
    assert np.isfinite(protos[0].result()).all() and np.isfinite(protos[2].result()).all()


# --------------------------------------------------------------------------- FedAvg star


def fedavg_cluster(n_leaves, L=200, seed=0, params=None, samples=None):
    rng = np.random.default_rng(seed)
    ids = list(range(n_leaves + 1))
    xs = {i: rng.standard_normal(L).astype(np.float32) for i in ids}
    ns = samples or {i: int(rng.integers(20, 400)) for i in ids}
    sec = make_secrets(ids)
    params = params or SecAggParams(max_samples=512)
    secure = {i: SecureFedAvgRound(i, 2, 0, ids[1:], xs[i], ns[i], params, sec[i], seeded_rng(seed + i)) for i in ids}
    plain = {i: FedAvgRound(i, 2, 0, ids[1:], xs[i], ns[i]) for i in ids}
    return secure, plain, xs, ns


def _fedavg_bound(hub: SecureFedAvgRound, ns, contributors, ref) -> float:
    w = {i: min(n, hub.params.max_samples) / hub.params.max_samples for i, n in ns.items()}
    total = w[0] + sum(w[u] for u in contributors)
    mag = float(np.abs(ref).max())
    return fedavg_error_bound(hub.enc, len(contributors), total, mag) + 4 * 2.0**-24 * mag


def test_star_of_20_leaves_with_sparse_masking_matches_fedavg() -> None:
    secure, plain, xs, ns = fedavg_cluster(20, seed=21)
    seen: list[Message] = []
    router = Router(secure, hold=lambda to, m: seen.append(m) or False).run()
    Router(plain).run()
    hub = secure[0]
    spec = hub.agg.spec
    assert spec.sparse and all(len(spec.graph[u]) == 8 for u in spec.members)  # not 19
    assert router.deadlines == 0 and not router.rejected
    ref = plain[0].result()
    bound = _fedavg_bound(hub, ns, list(range(1, 21)), ref)
    for i, p in secure.items():
        assert p.finished() and p.status == "ok"
        assert np.abs(p.result() - ref).max() <= bound
    assert hub.arrived() == 20
    # a leaf's shares went to its 8 masking partners only, and its bundle holds 8 sealed shares
    for step in ("shares", "bundle"):
        sizes = {len(msgpack.unpackb(m.meta["body"], strict_map_key=False)["ct"]) for m in seen if step_of(m) == step}
        assert sizes == {8}


def star_with_leaf_5_gone(seed: int, before: str):
    """A 6-leaf secure star whose leaf 5 vanished before its step `before`, run until the hub
    waits for it: (protocols, router, hub)."""
    secure, *_ = fedavg_cluster(6, seed=seed)
    router = Router(secure, crash_before={5: before})
    router.start()
    router.deliver()
    return secure, router, secure[0]


def test_star_a_restarted_leaf_or_hub_costs_no_deadline() -> None:
    # leaf 5 shared and died before masking; its new process agreed fresh sessions with the hub,
    # whose transport says so: the hub averages the rest at once instead of at the phase deadline
    secure, router, hub = star_with_leaf_5_gone(23, "masked")
    assert not hub.finished(), "without being told, the hub waits for the old process"
    router.post(0, hub.peer_restarted(5))
    router.deliver()
    assert router.deadlines == 0
    assert hub.status == "ok" and hub.contributors == [1, 2, 3, 4, 6]
    assert all(secure[i].finished() and secure[i].arrived() == 1 for i in (1, 2, 3, 4, 6))
    # the hub died before asking for reveals: told it restarted, every leaf keeps its own model at once
    secure, plain, xs, ns = fedavg_cluster(6, seed=24)
    router = Router(secure, crash_before={0: "unmask"})
    router.start()
    router.deliver()
    assert not any(secure[i].finished() for i in range(1, 7))
    for i in range(1, 7):
        router.post(i, secure[i].peer_restarted(0))
    router.deliver()
    assert router.deadlines == 0
    for i in range(1, 7):
        p = secure[i]
        assert p.finished() and p.arrived() == 0 and np.array_equal(p.result(), p.fallback)
        assert p.members[0].outcome == "aborted:restarted"


@pytest.mark.parametrize("stage,verify", [("shares", True), ("masked", True), ("confirm", True), ("reveal", True),
                                          ("shares", False), ("masked", False), ("reveal", False)])
def test_star_with_a_dropout_averages_the_rest(stage: str, verify: bool) -> None:
    params = SecAggParams(max_samples=512, verify_views=verify)
    secure, plain, xs, ns = fedavg_cluster(14, seed=22, params=params)
    router = Router(secure, crash_before={5: stage}).run()
    hub = secure[0]
    expected = [u for u in range(1, 15) if u != 5 or stage in ("confirm", "reveal")]
    assert hub.status == "ok" and hub.contributors == expected
    # the plain FedAvg with the same contributors
    plain_hub = FedAvgRound(0, 2, 0, expected, xs[0], ns[0])
    for u in expected:
        plain_hub.on_message(Message(Kind.MODEL, u, 2, meta={"samples": ns[u]}, tensors={"delta": xs[u]}))
    ref = plain_hub.result()
    for i in router.alive():
        assert secure[i].status == "ok"
        assert np.abs(secure[i].result() - ref).max() <= _fedavg_bound(hub, ns, expected, ref)


def test_star_privacy_floor() -> None:
    # two leaves, one drops after sharing: the hub must not unmask the single input
    secure, _, xs, _ = fedavg_cluster(2, seed=23)
    router = Router(secure, crash_before={2: "masked"}).run()
    assert secure[0].status == "failed" and secure[0].failure_reason == "privacy_floor"
    assert np.array_equal(secure[0].result(), xs[0])
    assert secure[1].status == "failed" and np.array_equal(secure[1].result(), xs[1])
    assert router.dead == {2}
    # one leaf: refused from the start
    secure, _, xs, _ = fedavg_cluster(1, seed=24)
    Router(secure).run()
    assert secure[0].failure_reason == "privacy_floor" and np.array_equal(secure[1].result(), xs[1])


def test_star_leaf_gives_up_on_a_dead_hub() -> None:
    secure, _, xs, _ = fedavg_cluster(4, seed=25)
    router = Router(secure, crash_before={0: "bundle"}).run()
    for i in range(1, 5):
        p = secure[i]
        assert p.status == "failed" and p.failure_reason == "member_timeout"
        assert np.array_equal(p.result(), xs[i])
    assert router.deadlines == secure[1].params.patience


def test_every_round_ends_within_the_deadline_cap() -> None:
    adj = circulant(8, (1, 2))
    params = SecAggParams(patience=50, max_deadlines=5)  # patience alone would wait far longer
    protos, xs, W = gossip_cluster(adj, L=50, seed=31, params=params)
    router = Router(protos, crash_before={3: "masked"}).run(max_deadlines=5)
    assert router.deadlines <= 5
    for i in router.alive():
        p = protos[i]
        assert p.finished() and p.deadlines <= 5
        assert p.status == "ok"
        assert_within_bound(p, xs, W)
    assert any(f.reason == "member_timeout" and f.group == 3 for f in protos[2].failures)


def test_members_known_to_be_down_are_not_waited_for() -> None:
    adj = circulant(8, (1, 2))
    rng = np.random.default_rng(32)
    xs = {i: rng.standard_normal(40).astype(np.float32) for i in adj}
    W = mh_weights(adj)
    sec = make_secrets(adj)
    protos = {
        i: SecureGossipRound(i, 4, adj, W[i], xs[i], SecAggParams(), sec[i], seeded_rng(i), expected=set(adj[i]) - {3})
        for i in adj
    }
    router = Router(protos, crash_before={3: "shares"}).run()
    assert router.deadlines == 0  # liveness knowledge replaces every timeout
    for i in router.alive():
        p = protos[i]
        assert p.status == "ok" and p.contributors == [u for u in adj[i] if u != 3]
        assert_within_bound(p, xs, W)
    # FedAvg hub likewise
    secure, _, xs, ns = fedavg_cluster(6, seed=33)
    hub = secure[0]
    secure[0] = SecureFedAvgRound(0, 2, 0, range(1, 7), xs[0], ns[0], hub.params, hub._secret, expected={1, 2, 3, 4, 6})
    router = Router(secure, crash_before={5: "shares"}).run()
    assert router.deadlines == 0 and secure[0].status == "ok" and secure[0].contributors == [1, 2, 3, 4, 6]


def test_star_a_leaf_seen_two_rounds_on_is_not_waited_for_but_one_round_on_is() -> None:
    # leaf 5 skipped this round after a heal (it never shared): seen one round on it may still send
    # this round's late traffic, so the hub waits; seen two rounds on it never will, and the hub's
    # share phase closes without it at once, as for a leaf whose process is gone
    secure, router, hub = star_with_leaf_5_gone(25, "shares")
    router.post(0, hub.peer_moved_on(5, hub.round + 1))
    router.deliver()
    assert not hub.finished()
    router.post(0, hub.peer_moved_on(5, hub.round + 2))
    router.deliver()
    assert router.deadlines == 0
    assert hub.status == "ok" and hub.contributors == [1, 2, 3, 4, 6]
    assert all(secure[i].finished() and secure[i].arrived() == 1 for i in (1, 2, 3, 4, 6))
