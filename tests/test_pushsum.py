"""Push-sum, driven without sockets: directed graphs reach the average; the strategy's one-peer schedule."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl import topology
from p2pfl.messages import Kind, Message
from p2pfl.protocols import DELTA, Rejected
from p2pfl.strategies import RoundContext, get
from p2pfl.strategies.pushsum import WEIGHT, PushSumRound, PushSumWeight, in_peers, out_peer


def _run(out: dict[int, list[int]], x: dict[int, np.ndarray], rounds: int,
         lose: set[tuple[int, int, int]] = frozenset()) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """`rounds` push-sum steps on the directed graph `out` (node -> out-neighbours), messages in memory.

    lose: (round, sender, recipient) of messages that never arrive (the recipient's deadline passes).
    """
    senders = {i: [j for j in out if i in out[j]] for i in out}
    z, w = dict(x), {i: 1.0 for i in out}
    for r in range(1, rounds + 1):
        protos = {i: PushSumRound(i, r, out[i], senders[i], z[i], w[i]) for i in out}
        for i, p in protos.items():
            for to, msg in p.start():
                if (r, i, to) not in lose:
                    protos[to].on_message(msg)
        for p in protos.values():
            if not p.finished():
                p.on_deadline()
        z = {i: p.result() for i, p in protos.items()}
        nxt = {i: p.prepared_next() for i, p in protos.items()}
        assert all(n.round == r + 1 for n in nxt.values())
        w = {i: n.weight for i, n in nxt.items()}
    return z, w


def _inputs(n: int, dim: int = 6, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.normal(size=dim).astype(np.float32) for i in range(n)}


def test_directed_ring_reaches_the_average_of_the_inputs() -> None:
    n = 6
    x = _inputs(n)
    z, w = _run({i: [(i + 1) % n] for i in range(n)}, x, rounds=150)
    avg = np.mean(list(x.values()), axis=0)
    for i in range(n):
        np.testing.assert_allclose(z[i], avg, atol=1e-5)
    assert sum(w.values()) == pytest.approx(n)  # mass is conserved: no message was lost


def test_uneven_in_degrees_are_corrected_by_the_weights() -> None:
    """A directed graph whose column-stochastic mixing is not doubly stochastic: naive averaging
    of x would converge to a skewed value; x / w converges to the true average."""
    out = {0: [1, 2, 3], 1: [2], 2: [3, 4], 3: [0], 4: [0]}
    x = _inputs(5, seed=1)
    z, w = _run(out, x, rounds=200)
    avg = np.mean(list(x.values()), axis=0)
    for i in out:
        np.testing.assert_allclose(z[i], avg, atol=1e-5)
    assert max(w.values()) - min(w.values()) > 0.1  # the weights did real work here
    assert sum(w.values()) == pytest.approx(5)


def test_a_lost_share_keeps_every_model_a_convex_combination() -> None:
    n = 4
    x = {i: np.full(3, float(i), dtype=np.float32) for i in range(n)}
    z, w = _run({i: [(i + 1) % n] for i in range(n)}, x, rounds=80, lose={(1, 0, 1)})
    assert sum(w.values()) < n  # node 0's first share (w = 1/2) is gone
    for i in range(n):
        assert 0.0 <= float(z[i][0]) <= 3.0
        np.testing.assert_allclose(z[i], z[0], atol=1e-5)  # still a consensus


@pytest.mark.parametrize(
    "msg, reason",
    [
        (Message(Kind.GLOBAL, 1, 1, meta={WEIGHT: 0.5}, tensors={DELTA: np.zeros(3, np.float32)}), "unexpected_kind"),
        (Message(Kind.MODEL, 2, 1, meta={WEIGHT: 0.5}, tensors={DELTA: np.zeros(3, np.float32)}), "not_scheduled"),
        (Message(Kind.MODEL, 1, 1, meta={WEIGHT: -1.0}, tensors={DELTA: np.zeros(3, np.float32)}), "bad_meta"),
        (Message(Kind.MODEL, 1, 1, meta={WEIGHT: float("nan")}, tensors={DELTA: np.zeros(3, np.float32)}), "bad_meta"),
        (Message(Kind.MODEL, 1, 1, meta={}, tensors={DELTA: np.zeros(3, np.float32)}), "bad_meta"),
        (Message(Kind.MODEL, 1, 1, meta={WEIGHT: 0.5}, tensors={DELTA: np.zeros(4, np.float32)}), "wrong_shape"),
    ],
)
def test_bad_pushes_are_refused_and_leave_the_node_as_it_was(msg: Message, reason: str) -> None:
    proto = PushSumRound(0, 1, [1], [1], np.ones(3, np.float32), 2.0)
    with pytest.raises(Rejected) as err:
        proto.on_message(msg)
    assert err.value.reason == reason
    proto.on_deadline()
    np.testing.assert_allclose(proto.result(), np.ones(3))  # kept half of (2 * z, 2): z itself
    assert proto.prepared_next() == PushSumWeight(2, 1.0)


def test_a_share_carries_the_weight_and_w_times_z() -> None:
    proto = PushSumRound(3, 7, [4, 5], [4], np.full(2, 3.0, np.float32), weight=1.5)
    out = proto.start()
    assert sorted(to for to, _ in out) == [4, 5]
    msg = out[0][1]
    assert (msg.kind, msg.round, msg.meta[WEIGHT]) == (Kind.MODEL, 7, pytest.approx(0.5))
    np.testing.assert_allclose(msg.tensors[DELTA], np.full(2, 1.5))  # (1.5 * 3) / 3


def test_one_peer_schedule_on_a_ring_is_a_directed_ring_each_round() -> None:
    g = topology.generate("ring", 8)
    adj = {v: tuple(sorted(g.neighbors(v))) for v in g.nodes}
    for r in (1, 2, 3):
        outs = {i: out_peer(adj, i, r) for i in adj}
        step = 1 if r % 2 else -1  # odd rounds push clockwise, even ones back
        assert outs == {i: (i + step) % 8 for i in adj}
        assert all(in_peers(adj, i, r) == {(i - step) % 8} for i in adj)


@pytest.mark.parametrize("spec", ["ring", "star", "torus", "exponential"])
def test_strategy_averages_over_its_time_varying_directed_graph(spec: str) -> None:
    """Built through the registry as the node builds it (context, senders, carried weight)."""
    n = 16 if spec == "torus" else 8
    g = topology.generate(spec, n)
    adj = {v: tuple(sorted(g.neighbors(v))) for v in g.nodes}
    strategy = get("pushsum")
    x = _inputs(n, seed=3)
    z, carried = dict(x), {i: None for i in adj}
    for r in range(1, 400):
        ctxs = {i: RoundContext(node_id=i, round=r, last_round=400, adjacency=adj, weights={}, hub=None, own=z[i],
                                start=z[i], fallback=None, samples=1, local_steps=1, expected=frozenset(adj[i]),
                                active=frozenset(adj), prepared=carried[i]) for i in adj}
        protos = {i: strategy.protocol(c) for i, c in ctxs.items()}
        for i, p in protos.items():
            for to, msg in p.start():
                assert msg.sender in strategy.senders(ctxs[to])
                protos[to].on_message(msg)
        assert all(p.finished() for p in protos.values())  # every node heard all it waits for
        z = {i: p.result() for i, p in protos.items()}
        carried = {i: p.prepared_next() for i, p in protos.items()}
    avg = np.mean(list(x.values()), axis=0)
    for i in adj:
        np.testing.assert_allclose(z[i], avg, atol=1e-4)
    assert sum(c.weight for c in carried.values()) == pytest.approx(n)
