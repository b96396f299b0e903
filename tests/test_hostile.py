"""Hostile input against live nodes: dropped, counted, logged; the node runs on, its model untouched.

Real ZeroMQ sockets on 127.0.0.1, real keys and crypto, real `p2pfl.node.Node`s; nothing mocked.

The cluster is a triangle (complete graph of 3, plain gossip). Nodes 0 and 1 are real Nodes
running in threads of this process; node 2 is a `ScriptedNeighbour` (tests/helpers/scripted.py):
an honest gossip peer with a fixed delta per round that seals its frames by hand, so it can also
send anything else on the same connection. It sends its round-r MODEL only after node 0's
round-r MODEL reached it, and whatever it sends to node 0 before that MODEL is processed by
node 0 during round r (one connection keeps its order; node 0 cannot finish round r without
that MODEL). So every hostile frame is handled at a known round, and with a 30 s phase deadline
every honest message arrives: the runs are deterministic, not lucky.

- control: the cluster with no hostile traffic (module fixture, shared).
- attacked: the same seeds with a scripted attack every round; node 0's final model must be
  bit-identical to the control's, and every attack counted under its reason and logged.
- fuzz: >= 10,000 random and mutated frames while the node trains; every one counted, memory
  and log volume bounded, the model again bit-identical.
- a sync (hello answer) claiming a round beyond the run is dropped, not adopted.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import msgpack
import numpy as np
import pytest
import torch
import zmq
from zmq.utils.monitor import recv_monitor_message

from helpers.fuzz import FrameFuzzer
from helpers.scripted import ScriptedNeighbour, flip, honest_delta
from faultlog import record_fault

from p2pfl import wire
from p2pfl.config import Cluster, ExperimentConfig
from p2pfl.crypto import load_private_key
from p2pfl.data import partition
from p2pfl.launch import Workload, build_node
from p2pfl.messages import Kind, Message
from p2pfl.node import Node, RoundRecord
from p2pfl.protocols import DELTA
from p2pfl.simulate import prepare_cluster
from p2pfl.training import Task, load_task

ROUNDS = 5
SEED = 11
SCRIPTED = 2  # the scripted neighbour's id; nodes 0 and 1 are real
VICTIM = 0
RUN_TIMEOUT = 120.0  # a run takes a few seconds; only a hung node gets near this
FUZZ_PER_ROUND = 2_000  # x ROUNDS = 10,000 hostile messages
RSS_BOUND_MB = 200

TRANSPORT_REASONS = {"truncated", "bad_header", "bad_version", "bad_kind", "bad_dtype", "bad_shape",
                     "bad_frames", "bad_meta", "bad_value", "too_large", "tampered", "unknown_peer",
                     "wrong_recipient", "replay", "no_session", "bad_handshake", "stale_handshake"}


# -- running a cluster -----------------------------------------------------------------------


@dataclass
class ClusterRun:
    nodes: dict[int, Node]
    records: dict[int, list[RoundRecord]]
    final: dict[int, np.ndarray]
    scripted: ScriptedNeighbour
    wall: float
    ended: float  # time.monotonic() once both real nodes had returned (at most 0.1 s late)


def experiment(**overrides) -> ExperimentConfig:
    base = dict(task="digits-mlp", nodes=3, topology="complete", rounds=ROUNDS, seed=SEED,
                round_timeout=30.0, startup_timeout=30.0, eval_every=ROUNDS)
    return ExperimentConfig(**{**base, **overrides}).validate()


@pytest.fixture(scope="module")
def task() -> Task:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as simulate's workers do: two training threads on two cores
    yield load_task("digits-mlp", SEED)
    torch.set_num_threads(threads)


def run_cluster(run_dir: Path, task: Task, *,
                on_round: Callable[[ScriptedNeighbour, int], int | None] | None = None,
                prepare: Callable[[ScriptedNeighbour], None] | None = None,
                on_start: Callable[[ScriptedNeighbour], None] | None = None,
                config: ExperimentConfig | None = None, scripted_timeout: float = 60.0,
                delta_seed: int = 1234, strict: bool = True, done_after: float = 0.0) -> ClusterRun:
    """Nodes 0 and 1 as real Nodes in threads, node 2 scripted; with `strict`, all must finish cleanly.

    `prepare(scripted)` runs before the scripted neighbour starts (counters it uses there are
    below its hello's); `on_start(scripted)` runs in its thread before the hello;
    `on_round(scripted, r)` in its thread each round, before its honest MODEL.
    """
    cfg = config or experiment()
    cluster = Cluster.load(prepare_cluster(cfg, run_dir), seed=cfg.seed)
    workload = Workload(task, partition(task.dataset.y_train, cfg.nodes, cfg.partition, cfg.alpha, cfg.seed))
    context = zmq.Context()
    nodes = {i: build_node(cfg, cluster, i, workload=workload, context=context) for i in (0, 1)}
    scripted = ScriptedNeighbour(SCRIPTED, cluster, load_private_key(cluster.require(SCRIPTED).key_file), context,
                                 cfg.rounds, nodes[0].trainer.num_params, nodes[0].transport.limits,
                                 watch=VICTIM, on_round=on_round, on_start=on_start, timeout=scripted_timeout,
                                 delta_seed=delta_seed, done_after=done_after)
    if prepare is not None:
        prepare(scripted)
    records: dict[int, list[RoundRecord]] = {}
    errors: dict[int, BaseException] = {}

    def run_one(i: int) -> None:
        try:
            records[i] = nodes[i].run()
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors[i] = exc

    started = time.monotonic()
    scripted.start()
    threads = [threading.Thread(target=run_one, args=(i,), name=f"node-{i}", daemon=True) for i in nodes]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and time.monotonic() < started + RUN_TIMEOUT:
        if strict:  # fail now rather than after every round's deadline
            assert scripted.error is None, f"the scripted neighbour failed:\n{scripted.error}"
        threads[0].join(0.1)
        threads[1].join(0.1)
    hung = [t.name for t in threads if t.is_alive()]
    ended = time.monotonic()
    wall = ended - started
    scripted.stop()
    assert not hung, f"{hung} still running after {RUN_TIMEOUT}s (scripted: {scripted.error})"
    term = threading.Thread(target=context.term, daemon=True)
    term.start()
    term.join(30)
    assert not term.is_alive(), "context.term() hung: a socket was left open"
    assert not errors, errors
    if strict:
        assert scripted.error is None, scripted.error
        assert scripted.decode_errors == []  # the honest nodes' frames all authenticate
        assert scripted.rounds_done == cfg.rounds
    final = {i: node.trainer.get_flat() for i, node in nodes.items()}
    return ClusterRun(nodes, records, final, scripted, wall, ended)


def assert_finished_every_round(run: ClusterRun) -> None:
    for i in (0, 1):
        assert [rec.round for rec in run.records[i]] == list(range(1, ROUNDS + 1))
        assert [rec.arrived for rec in run.records[i]] == [2] * ROUNDS  # no deadline ever passed
        assert np.isfinite(run.final[i]).all()
    # node 2 heard both real nodes' MODELs of every round
    heard = {(h.sender, h.round) for h in run.scripted.received if h.kind == Kind.MODEL}
    assert {(i, r) for i in (0, 1) for r in range(1, ROUNDS + 1)} <= heard


@pytest.fixture(scope="module")
def control(task: Task, tmp_path_factory: pytest.TempPathFactory) -> ClusterRun:
    run = run_cluster(tmp_path_factory.mktemp("control"), task)
    assert_finished_every_round(run)
    for i in (0, 1):
        assert run.nodes[i].transport.stats.dropped == {}
    return run


def test_control_run_is_reproducible_and_trains(task: Task, control: ClusterRun, tmp_path: Path) -> None:
    """The premise of the comparisons below: same seeds, same bits in a fresh cluster; and node
    2's contributions do reach node 0's model, so a bit-identical model is a real check."""
    again = run_cluster(tmp_path / "again", task)
    for i in (0, 1):
        assert np.array_equal(again.final[i], control.final[i])
    other = run_cluster(tmp_path / "other", task, delta_seed=99)  # node 2 sends other (honest) deltas
    assert not np.array_equal(other.final[VICTIM], control.final[VICTIM])
    assert control.records[VICTIM][-1].test_acc > 0.5  # it did learn: 10 classes, chance is 0.1
    print(f"\ncontrol run: {control.wall:.1f}s, node 0 acc {control.records[VICTIM][-1].test_acc:.3f}")


# -- scripted attacks ------------------------------------------------------------------------

STRANGER = bytes([7]) * 32  # a private key that belongs to nobody in the cluster

# What node 0 must count per round for the attack below (reason -> messages).
ATTACK_PER_ROUND = {
    "replay": 1,  # exact bytes of an earlier honest frame
    "tampered": 3,  # meta ciphertext byte, data ciphertext byte, header byte
    "no_session": 1,  # an impostor of node 1: no session of node 1's has the id it names
    "unknown_peer": 2,  # sender 9 (not in the cluster), sender 0 (the victim itself)
    "wrong_recipient": 1,  # a genuine frame for node 1 delivered to node 0
    "too_large": 1,  # a tensor above Limits.for_model
    "wrong_round": 1,  # authenticated MODEL for round r + 7
    "stale_round": 1,  # authenticated MODEL for round r - 1, fresh counter
    "wrong_shape": 2,  # one element too many; float64 instead of float32
    "non_finite": 2,  # a NaN; an Inf
    "missing_tensor": 1,  # a MODEL without its delta
    "unexpected_kind": 1,  # a GLOBAL in a gossip round
}
# Authenticated and fresh: the transport hands them to the node, which refuses them.
ACCEPTED_THEN_REFUSED = ("wrong_round", "stale_round", "wrong_shape", "non_finite", "missing_tensor",
                         "unexpected_kind")


def header_counter_flipped(frames: list[bytes]) -> list[bytes]:
    """The header with the lowest bit of its counter flipped: still a valid header, not the sealed one."""
    counter = msgpack.unpackb(frames[0])[5]
    at = frames[0].find(b"\xcf" + struct.pack(">Q", counter))  # msgpack uint64: the counter is a ~2^60 ns clock
    assert at > 0
    return [flip(frames[0], at + 8), *frames[1:]]


def attack(nb: ScriptedNeighbour, r: int) -> None:
    """Round r's hostile frames to node 0, all before node 2's honest round-r MODEL."""
    n = nb.delta_length
    good = honest_delta(r, n)

    def send(frames: list[bytes]) -> None:
        nb.send(VICTIM, frames)

    def sealed(msg: Message, **kw) -> list[bytes]:
        return nb.seal(msg, VICTIM, **kw)

    send(nb.heartbeat_frames[VICTIM] if r == 1 else nb.sent[(VICTIM, r - 1)])  # replay
    f = sealed(nb.model(r))
    send([f[0], flip(f[1], 5), *f[2:]])  # tampered: meta ciphertext
    f = sealed(nb.model(r))
    send([*f[:2], flip(f[2], 1000), *f[3:]])  # tampered: data ciphertext (meta authenticates)
    send(header_counter_flipped(sealed(nb.model(r))))  # tampered: header (the associated data)
    send(sealed(nb.model(r, sender=1), key=nb.key_for(VICTIM, STRANGER, as_id=1)))  # no_session: impostor of 1
    send(sealed(nb.model(r, sender=9), key=nb.key_for(VICTIM, STRANGER, as_id=9)))  # unknown_peer
    send(sealed(nb.model(r, sender=VICTIM), key=bytes(range(32))))  # unknown_peer: "from" itself
    send(nb.seal(nb.model(r), 1))  # wrong_recipient: node 1's genuine frame, to node 0
    oversize = np.zeros(nb.limits.max_tensor_elements + 1, np.float32)
    send(sealed(nb.model(r, oversize), limits=wire.Limits()))  # too_large (sealed with roomier limits)
    send(sealed(nb.model(r + 7)))  # wrong_round
    send(sealed(nb.model(r - 1)))  # stale_round (round 0 during round 1)
    send(sealed(nb.model(r, np.zeros(n + 1, np.float32))))  # wrong_shape
    send(sealed(nb.model(r, good.astype(np.float64))))  # wrong_shape: dtype
    for bad in (np.nan, np.inf):  # non_finite
        vec = good.copy()
        vec[n // 2] = bad
        send(sealed(nb.model(r, vec)))
    send(sealed(Message(Kind.MODEL, nb.id, r, {}, {"delta2": good})))  # missing_tensor
    send(sealed(Message(Kind.GLOBAL, nb.id, r, {}, {DELTA: good})))  # unexpected_kind


def test_attacks_are_dropped_counted_logged_and_change_nothing(task: Task, control: ClusterRun, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        run = run_cluster(tmp_path, task, on_round=attack)
    assert_finished_every_round(run)
    victim = run.nodes[VICTIM].transport.stats

    # the model: bit-identical to the run without attacks, on both real nodes
    assert np.array_equal(run.final[VICTIM], control.final[VICTIM])
    assert np.array_equal(run.final[1], control.final[1])

    # every attack counted under its reason, exactly, and in the round it was sent
    assert victim.dropped == {k: v * ROUNDS for k, v in ATTACK_PER_ROUND.items()}
    for rec in run.records[VICTIM]:
        assert rec.dropped == {k: v * rec.round for k, v in ATTACK_PER_ROUND.items()}, f"round {rec.round}"
    assert run.nodes[1].transport.stats.dropped == {}  # it was not attacked
    # the authenticated ones passed the transport (fresh counters) and were refused by the node
    refused = sum(ATTACK_PER_ROUND[k] for k in ACCEPTED_THEN_REFUSED) * ROUNDS
    assert victim.messages_received == control.nodes[VICTIM].transport.stats.messages_received + refused

    # a warning per reason, naming node 0
    warned = {reason for reason in ATTACK_PER_ROUND for rec in caplog.records
              if rec.levelno == logging.WARNING and f"node {VICTIM} dropped a message ({reason})" in rec.getMessage()}
    assert warned == set(ATTACK_PER_ROUND)
    print(f"\nattacked run: {run.wall:.1f}s, node 0 dropped {victim.dropped}")


# -- fuzz ------------------------------------------------------------------------------------
    record_fault("scripted attacks on a live node, each round: replay, tampered meta/data/header, impostor key, unknown "
                 "sender, wrong recipient, oversize tensor, wrong/stale round, wrong shape/dtype, NaN/Inf, missing tensor, "
                 "unexpected kind", sum(victim.dropped.values()),
                 "held: every frame dropped and counted under its reason, a warning per reason; both real nodes' final "
                 "models bit-identical to the unattacked run", unit="frames")


def vm_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def refused_by_libzmq(nb: ScriptedNeighbour, frames: list[bytes]) -> None:
    """Send `frames` on a fresh connection to node 0 and wait until libzmq hangs up on it.

    A frame above the ROUTER's MAXMSGSIZE (`Limits.max_frame_bytes`) is refused by libzmq's
    decoder before it is allocated, and libzmq closes that connection: the message never
    reaches the transport, so it is not in `stats.dropped` (the kernel-level "drop" is the
    disconnect, which the sender sees).
    """
    sock = nb.raw_socket()
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        sock.connect(nb.address(VICTIM))
        sock.send_multipart(frames)
        assert monitor.poll(30_000), "libzmq did not close the connection of an oversize frame"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


def test_fuzzed_frames_are_all_counted_while_the_node_trains(task: Task, control: ClusterRun, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    fuzzers: list[FrameFuzzer] = []
    sent_per_round: dict[int, int] = {}
    oversize = 0

    def prepare(nb: ScriptedNeighbour) -> None:
        # Valid sealed messages to mutate, made once node 2's sessions are agreed (on_start). Their
        # counters are below node 2's start-up heartbeat, which node 0 accepts before round 1: an
        # unmutated copy is a replay, and a mutation cannot authenticate (or names no session);
        # so no fuzz message can be accepted, and each must be counted.
        n = nb.delta_length
        rich = Message(Kind.MODEL, nb.id, 1, {"samples": 7, "tags": ["a", 1, None, b"\x00"]},
                       {DELTA: honest_delta(1, n), "mask": np.arange(10) % 2 == 0, "ids": np.arange(3, dtype=np.int64)})
        bases = [nb.seal(nb.model(1), VICTIM),
                 nb.seal(nb.model(2), VICTIM, chunk_bytes=wire.MIN_CHUNK_BYTES),  # 9 chunks to shuffle
                 nb.seal(Message(Kind.HEARTBEAT, nb.id, 0), VICTIM),
                 nb.seal(rich, VICTIM, chunk_bytes=wire.MIN_CHUNK_BYTES),
                 nb.seal(nb.model(1), 1)]  # node 1's: wrong_recipient unless mutated
        fuzzers.append(FrameFuzzer(SEED, bases))

    def on_round(nb: ScriptedNeighbour, r: int) -> None:
        nonlocal oversize
        if r == 1:
            big = b"\x00" * (nb.limits.max_frame_bytes + 1)
            refused_by_libzmq(nb, [big])
            header = fuzzers[0].bases[0]
            refused_by_libzmq(nb, [header[0], header[1], big])  # a valid-looking message, one chunk too big
            oversize = 2
        for _ in range(FUZZ_PER_ROUND):
            nb.send(VICTIM, fuzzers[0].message())
        sent_per_round[r] = FUZZ_PER_ROUND

    rss_before = vm_rss_mb()
    with caplog.at_level(logging.WARNING):
        run = run_cluster(tmp_path, task, on_round=on_round, on_start=prepare)
    rss_growth = vm_rss_mb() - rss_before
    assert_finished_every_round(run)
    victim = run.nodes[VICTIM].transport.stats
    sent = sum(sent_per_round.values())
    assert sent >= 10_000 and oversize == 2

    # Every fuzz message reached the transport (all frames are far below MAXMSGSIZE) and was
    # dropped and counted exactly once; the two oversize frames were refused by libzmq itself
    # (connection closed, see `refused_by_libzmq`) and so are in no counter.
    assert sum(victim.dropped.values()) == sent, victim.dropped
    cumulative = 0
    for rec in run.records[VICTIM]:
        cumulative += sent_per_round[rec.round]
        assert sum(rec.dropped.values()) == cumulative, f"round {rec.round}"
    assert set(victim.dropped) <= TRANSPORT_REASONS  # nothing got past the transport
    assert victim.messages_received == control.nodes[VICTIM].transport.stats.messages_received
    assert len(victim.dropped) >= 10, victim.dropped  # the fuzz reaches most checks
    assert run.nodes[1].transport.stats.dropped == {}

    # the model is untouched, the memory bounded, the log not flooded (one line per reason per second)
    assert np.array_equal(run.final[VICTIM], control.final[VICTIM])
    assert np.array_equal(run.final[1], control.final[1])
    assert rss_growth < RSS_BOUND_MB, f"RSS grew {rss_growth:.0f} MB"
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING and rec.name == "p2pfl.transport"]
    assert {reason for reason in victim.dropped for rec in warnings if f"({reason})" in rec.getMessage()} \
        == set(victim.dropped)
    assert len(warnings) <= len(victim.dropped) * (run.wall + 1)
    print(f"\nfuzz run: {sent} messages in {run.wall:.1f}s, RSS {rss_growth:+.1f} MB, "
          f"{len(warnings)} warning lines\n  dropped {dict(sorted(victim.dropped.items()))}\n"
          f"  mutations {dict(sorted(Counter(fuzzers[0].used).items()))}")
    record_fault("fuzzed frames (random bytes and mutated sealed frames) at a training node", sent,
                 f"held: every one dropped and counted, nothing past the transport; model bit-identical to the "
                 f"control run; RSS growth under {RSS_BOUND_MB} MB; warnings rate-limited to one per reason per second",
                 unit="frames")


# -- a sync from beyond the run ------------------------------------------------------------------


def test_a_sync_from_beyond_the_run_is_dropped_not_adopted(task: Task, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """An authenticated sync (the answer to a hello) for round 10^6 of a 5-round run.

    `Node._admit` drops any message for a round beyond `config.rounds` ("cannot be honest",
    counted as wrong_round), but `_on_heartbeat` stores a sync's round unchecked and
    `_catch_up` jumps to it: node 0 adopts the sender's model and returns after zero rounds.
    Sent before node 2's hello on the same connection, it is handled in node 0's start-up.
    """
    far = 10**6

    def on_start(nb: ScriptedNeighbour) -> None:
        sync = Message(Kind.HEARTBEAT, nb.id, far, {"sync": True}, {DELTA: honest_delta(0, nb.delta_length)})
        nb.send(VICTIM, nb.seal(sync, VICTIM))

    # Short deadlines and down_after=1 only so that the buggy run (node 0 gone at once) ends in
    # seconds; the honest messages of a correct run take milliseconds.
    cfg = experiment(round_timeout=5.0, down_after=1)
    with caplog.at_level(logging.WARNING):
        run = run_cluster(tmp_path, task, on_start=on_start, config=cfg, scripted_timeout=10.0, strict=False)
    assert len(run.records[VICTIM]) == ROUNDS, f"node 0 ran {len(run.records[VICTIM])} of {ROUNDS} rounds"
    # what node 0 refused to take in: the sync, once (its sends to node 2 after the script gave
    # up are refused at once, counted as send_queue_full: they are not messages it received)
    dropped = run.nodes[VICTIM].transport.stats.dropped
    assert {k: n for k, n in dropped.items() if k != "send_queue_full"} == {"wrong_round": 1}, dropped
    record_fault("authenticated sync claiming round 10^6 of a 5-round run", 1,
                 "held: dropped and counted as wrong_round, not adopted; node 0 ran all 5 rounds", unit="message")


def test_probes_claiming_rounds_beyond_the_run_or_a_far_join_move_no_one(task: Task, tmp_path: Path) -> None:
    """Probes (docs/protocol.md, *Liveness*) say the sender's round and, answering a neighbour heard
    again, the round to join. An authenticated neighbour sends probes for round 10^6, and for round 1
    inviting node 0 to join round 5 of 5; and probes of round 1 saying they skipped from a round not
    before it, or from a round of the wrong type. Honest probes only ever name their own round or the
    next to join (and never one beyond the run), and skip forward: node 0 must ignore all of them and
    run every round, none skipped."""

    def on_start(nb: ScriptedNeighbour) -> None:
        for rnd, meta in ((10**6, {"probe": True}), (1, {"probe": True, "join": ROUNDS}),
                          (1, {"probe": True, "join": "5"}), (1, {"probe": True, "after": 10**6}),
                          (1, {"probe": True, "after": -3}), (1, {"probe": True, "after": "0"})):
            nb.send(VICTIM, nb.seal(Message(Kind.HEARTBEAT, nb.id, rnd, meta), VICTIM))

    run = run_cluster(tmp_path, task, on_start=on_start)
    assert [rec.round for rec in run.records[VICTIM]] == list(range(1, ROUNDS + 1))
    assert [rec.heard for rec in run.records[VICTIM]] == [[1, 2]] * ROUNDS  # no round stopped waiting for node 2
    assert "skipped_round" not in run.nodes[VICTIM].transport.stats.dropped
    record_fault("authenticated probes claiming round 10^6, inviting a jump to the last round, or saying they "
                 "skipped from a round not before their own", 6,
                 "held: ignored; node 0 ran every round, none skipped, every round heard every neighbour",
                 unit="message")


def _in_round_2_invite(probe_round: int, join: int) -> Callable[[ScriptedNeighbour, int], int | None]:
    """A script for node 2: in round 2 it sends each neighbour a probe of round `probe_round` inviting
    it to `join`, and goes on at round `join` without sending anything for round 2."""

    def on_round(nb: ScriptedNeighbour, r: int) -> int | None:
        if r != 2:
            return None
        for j in nb.neighbours:
            nb.send(j, nb.seal(Message(Kind.HEARTBEAT, nb.id, probe_round, {"probe": True, "join": join}), j))
        return join

    return on_round


def test_a_node_invited_far_ahead_mid_round_runs_that_round_instead(task: Task, tmp_path: Path) -> None:
    """Catching up in place (docs/protocol.md, *Liveness*): while nodes 0 and 1 wait in round 2,
    node 2 (scripted) probes them from round 4, inviting them to join it there, as the side of a
    healed partition that ran ahead does, and goes on in round 4 without sending anything for 2.
    Each real node stops its round-2 exchange and runs it as round 4 with the model it trained
    (one round run to meet node 2, not two: round 2 without it, then the skip), and every later
    round hears both neighbours. Before, each waited out round 2's 30 s deadline for node 2."""

    run = run_cluster(tmp_path, task, on_round=_in_round_2_invite(4, join=4))
    for i in (0, 1):
        assert [rec.round for rec in run.records[i]] == [1, 4, 5], [rec.round for rec in run.records[i]]
        assert [rec.heard for rec in run.records[i]] == [[1 - i, 2]] * 3
    # each said it gave round 2 up (round 1 was its last before 4): a neighbour still in 2 or 3 stops waiting for it
    skips = sorted((sender, r, meta["after"]) for sender, r, meta in run.scripted.heartbeats if "after" in meta)
    assert skips == [(0, 4, 1), (1, 4, 1)], skips
    record_fault("authenticated probe from two rounds ahead inviting a join mid-round (a healed partition's "
                 "other side)", 1, "held: both nodes ran their round-2 exchange as round 4 and heard every "
                 "neighbour in every round after", unit="message")


def test_a_neighbour_inviting_us_to_its_next_round_is_not_waited_for_in_this_one(task: Task, tmp_path: Path) -> None:
    """A probe with `join` = its round + 1 says the neighbour's round was fixed without us (a secure
    group, or a round it finished), so it sends us nothing more for it (docs/protocol.md, *Liveness*).
    Node 2 (scripted) says so in round 2 and goes on at round 3 without a round-2 model: nodes 0 and
    1 end round 2 with each other's model only, at once rather than at round 2's 30 s deadline,
    and hear node 2 again from round 3 on."""

    cfg = experiment()
    run = run_cluster(tmp_path, task, on_round=_in_round_2_invite(2, join=3), config=cfg)
    for i in (0, 1):
        assert [rec.round for rec in run.records[i]] == list(range(1, ROUNDS + 1))
        assert [rec.heard for rec in run.records[i]] == [[1 - i, 2], [1 - i]] + [[1 - i, 2]] * (ROUNDS - 2)
        wait = run.records[i][1].round_time - run.records[i][1].train_time
        assert wait < cfg.round_timeout / 3, f"node {i} waited {wait:.1f}s in round 2 for a neighbour that left it"
    record_fault("authenticated probe inviting a join of the sender's next round (its round fixed without us)", 1,
                 "held: both nodes ended that round with each other's model only, without waiting for the sender, "
                 "and heard it again from the next round on", unit="message")


# -- the end of a run --------------------------------------------------------------------------------


def test_a_node_stays_until_its_neighbours_are_done(task: Task, tmp_path: Path) -> None:
    """The farewell (docs/protocol.md, *The end*): a node that has run its last round keeps its
    sockets open and reads until every neighbour has said done, so a slower neighbour still gets
    our last model (closing with unread input resets the connection and drops what was unsent).

    Node 2 (scripted) says done only 3 s after its last round. Nodes 0 and 1 must not return
    before that (causal, not timed: they wait for the message), and must return soon after it,
    long before the farewell's bound (round_timeout 30 s + 2 s); each said done to node 2.
    """
    run = run_cluster(tmp_path, task, done_after=3.0)
    assert_finished_every_round(run)
    done_at = run.scripted.done_sent_at
    assert done_at is not None
    assert run.ended >= done_at, f"the nodes returned {done_at - run.ended:.2f}s before node 2 said done"
    assert run.ended - done_at < 20.0, f"the nodes waited {run.ended - done_at:.1f}s after node 2 said done (bound 32 s)"
    said_done = {h.sender for h in run.scripted.received if h.kind == Kind.HEARTBEAT and h.round == ROUNDS}
    assert said_done == {0, 1}, f"done heartbeats (round {ROUNDS}) came from {sorted(said_done)}"
