"""One node's life: meet the neighbours, then for every round train, exchange, average, evaluate.

Owns the round loop: the strategy's protocol each round (`strategies`, driven only through the
`RoundProtocol` interface), the per-phase deadlines and the per-round metrics. Which round a
message belongs to, when to skip ahead and who is alive are `rounds.RoundWindow` and
`rounds.Liveness` (sans-I/O), which it consults and whose drops it counts. It drives the
protocol over a `Transport`; it does not know the byte layout of messages (wire) nor how
sockets work (transport), and it never blocks without a deadline.

It also decides what the node shares each round (the knobs of docs/privacy.md):

- who takes part (`protocols.Schedule`: participation p, the FedAvg hub's sample of K leaves,
  spent privacy budgets). A node that sits a round out does not train. In gossip it still sends
  its current model (gossip has no server to pace the rounds: a silent node would fall out of
  step with its neighbours) and mixes what it receives; with DP that model is a public value,
  so the round costs no privacy. A FedAvg leaf that sits out sends nothing (the hub does not
  wait for it) and adopts the hub's average; a hub that sits out gives its own data weight 0.
- differential privacy: the round update (model after local training minus model at round
  start) is clipped to `dp_clip`; `local` noises it before it leaves the node, `central` has the
  FedAvg hub noise the average, `distributed` has every secure-FedAvg leaf add its share of the
  noise to its fixed-point integers. The node's state is always built from released values
  (the round starts from the previous round's public result). Epsilon after every round comes
  from `privacy.PrivacyAccountant` over the rounds the node took part in. When the next round
  would exceed `dp_budget` the node stops for good: it trains and shares no new update again,
  but keeps running (and reporting) rounds as a node that sits out, so the run stays complete.
- compression: plain gossip and FedAvg vectors travel quantized (`compression.SharedVectorCodec`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import zmq

from p2pfl import privacy, strategies, topology
from p2pfl.checkpoint import CheckpointRefused, CheckpointStore, NodeState
from p2pfl.crypto import pairwise_key
from p2pfl.config import Cluster, ExperimentConfig, hub_of
from p2pfl.data import Shard
from p2pfl.messages import Kind, Message, Outbound
from p2pfl.compression import SharedVectorCodec
from p2pfl.record import RoundRecord
from p2pfl.recording import Observer, RoundSeen
from p2pfl.rounds import Dropped, Liveness, Place, RoundWindow
from p2pfl.protocols import DELTA, Rejected, RoundProtocol, Schedule, check_vector
from p2pfl.secagg import DistributedNoise
from p2pfl.strategies import RoundContext
from p2pfl.training import LocalTrainer, Task, TrainConfig, init_model
from p2pfl.transport import Peer, create as create_transport
from p2pfl.wire import Limits

log = logging.getLogger(__name__)

MAX_BUFFERED_PER_PEER = 64  # messages of later rounds kept per neighbour while this one finishes
FINAL_LINGER = 2.0  # seconds the last round's messages get to leave after the node is done
COMPRESSION_BITS = {"q8": 8, "q16": 16}
_CODEC_SALT = 0xC0DEC  # quantization randomness: unbiased rounding, not secret (seeded per node)
HELLO_MIN_INTERVAL = 1.0  # seconds: a neighbour's hellos are answered at most once per round of ours and per this
HELLO_RESEND = 2.0  # seconds: start-up asks again the neighbours that have not answered (a hello can be lost)


def train_config(c: ExperimentConfig) -> TrainConfig:
    """How every node of experiment `c` trains locally."""
    return TrainConfig(lr=c.lr, momentum=c.momentum, batch_size=c.batch_size, local_epochs=c.local_epochs,
                       local_steps=c.local_steps or None, optimizer=c.optimizer, prox_mu=c.fedprox_mu)


EVAL_SAMPLE_SALT = 0xE7A1  # the test sample's own random stream, apart from the seed's other uses


def eval_rows(test_size: int, sample: int, seed: int) -> np.ndarray | None:
    """The sorted test rows a round evaluates on: a fixed sample of `sample` rows drawn from `seed`, or None (every
    row) when sample is 0 or the test set is no larger."""
    if sample <= 0 or sample >= test_size:
        return None
    return np.sort(np.random.default_rng([seed, EVAL_SAMPLE_SALT]).choice(test_size, sample, replace=False))


T = TypeVar("T")
# A part of the node's life that waits: it yields how long it may wait (s) and is sent the next
# message or None (time is up); `yield from` chains the parts, the last one's return is the value.
Waits = Generator[float, "Message | None", T]
Life = Waits[list[RoundRecord]]


class Meter:
    """CPU seconds spent on one node's behalf, whoever runs it: a thread of its own, or a host's
    loop that runs many nodes (thread time alone would charge a node for its neighbours' work)."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self._since: float | None = None

    def begin(self) -> None:
        self._since = time.thread_time()

    def end(self) -> None:
        if self._since is not None:
            self.cpu += time.thread_time() - self._since
            self._since = None

    def now(self) -> float:
        """CPU so far, including the stretch running now."""
        return self.cpu + (time.thread_time() - self._since if self._since is not None else 0.0)


def drive(life: Waits[T], recv: Callable[[float], "Message | None"], meter: Meter) -> T:
    """Run `life` to its end in this thread, each wait a blocking `recv`; returns its value."""
    meter.begin()  # receiving (authenticating, decrypting) is the node's work too
    try:
        wait = next(life)
        while True:
            wait = life.send(recv(wait))
    except StopIteration as done:
        return done.value
    finally:
        meter.end()


@dataclass
class NodeSpec:
    """What a node needs to know about itself and its cluster."""

    node_id: int
    config: ExperimentConfig
    cluster: Cluster
    private_key: bytes


class Node:
    """A p2pfl node: a local trainer plus a transport, run round by round."""

    def __init__(
        self,
        spec: NodeSpec,
        task: Task,
        shard: Shard,
        context: zmq.Context | None = None,
        on_round: Callable[[RoundRecord], None] | None = None,
    ) -> None:
        self.id = spec.node_id
        self.config = spec.config
        # A time-varying topology draws each round's graph (`_round_graph`); `graph` is then the union of
        # the rounds' graphs, and the transport connects to every neighbour the node can ever have.
        self.graph = spec.cluster.graph
        self._time_varying = spec.cluster.time_varying
        if self._time_varying is not None:
            self.config.check_topology(self._time_varying)  # ConfigError before any socket opens
        self.neighbours = sorted(self.graph.neighbors(self.id))
        # shared by the nodes of a process; a time-varying topology's rounds have their own
        self._adjacency = topology.adjacency(self.graph) if self._time_varying is None else {}
        self.strategy = strategies.get(self.config.aggregation)
        self.on_round = on_round
        self.task = task
        self.samples = len(shard.y)
        self._eval_rows = eval_rows(len(task.dataset.y_test), self.config.eval_sample, self.config.seed)
        self._local_test = None if shard.x_test is None or shard.y_test is None else (shard.x_test, shard.y_test)
        # All nodes measure deltas against the same reference model, built from the seed.
        self.reference = task.initial_flat(self.config.seed)  # one read-only vector per process
        start_seed = self.config.seed if self.config.same_init else self.config.seed + 1 + self.id
        self.trainer = LocalTrainer(init_model(task, start_seed), shard, train_config(self.config), self.config.seed * 7919 + self.id)
        self.transport = create_transport(
            self.id,
            spec.private_key,
            # itself and its neighbours only: a table of the whole cluster per node is O(n^2) at scale
            peers={j: Peer(spec.cluster.nodes[j].address, spec.cluster.nodes[j].public_key)
                   for j in (self.id, *self.neighbours)},
            neighbours=self.neighbours,
            limits=Limits.for_model(self.trainer.num_params),
            context=context,
        )
        self.weights = topology.mh_weights(self.graph, self.id)
        self.hub = hub_of(self.graph) if self.strategy.needs_hub else None
        self._window = RoundWindow(self.config.rounds, MAX_BUFFERED_PER_PEER)  # later rounds' messages
        self._liveness = Liveness(self.neighbours, self.config.down_after)
        # This round's messages to neighbours marked down, sent if they are heard again in it (`_welcome_back`):
        # queued on a dead link they would only arrive, stale, ahead of fresh ones after a heal.
        self._withheld: dict[int, list[Message]] = {}
        self._probed: set[int] = set()  # neighbours marked down that have had their probe (`_probe_down`)
        self._told_moved_on: dict[int, int] = {}  # this round: neighbour -> the latest round told (`_tell_moved_on`)
        self._ready: set[int] = set()  # neighbours that have met all of their own neighbours
        self._done: set[int] = set()  # neighbours that have run their last round
        self._running = False  # past start-up
        self._syncs: dict[int, tuple[int, np.ndarray | None]] = {}  # hello answers: (round, delta; None if secure)
        self._hellos: dict[int, tuple[int, float]] = {}  # per neighbour: (our round, time) of the last hello answered
        # The last finished round: secure aggregation's surplus reveals arrive after we moved on (see _admit).
        self._finished: RoundProtocol | None = None
        self._prepared: object | None = None  # what the last round set up for the next (`prepared_next`)
        self._skipped_to = 0  # the round the node last skipped to (`_next_round`): it waits for every neighbour there
        self._ctx: RoundContext | None = None  # the last round's context (who owes us what in the next)
        self._steps = 0  # optimizer steps taken so far: a round's share goes to the strategy (`RoundContext.local_steps`)
        self.trainer.optimizer.register_step_post_hook(self._count_step)
        self._delta = self.trainer.get_flat() - self.reference
        directory = self.config.checkpoint_dir
        self._store = CheckpointStore(Path(directory) / f"node-{self.id}") if directory else None
        self._private_key = spec.private_key
        self._members = spec.cluster.nodes  # shared, read only: public keys of peers up to two hops away
        self._secrets: dict[tuple[int, bytes], bytes] = {}
        self._secagg_params = self.config.secagg_params()
        self._t0 = 0.0
        self.meter = Meter()
        # `simulate --record` only (p2pfl.recording): told what the node admits and its own round; None otherwise
        self.observer: Observer | None = None
        self._init_knobs()

    def _init_knobs(self) -> None:
        """DP noise source and accountant, the participation schedule, the compression codec."""
        c = self.config
        self.noise: privacy.SecureNoise | None = None
        self.accountant: privacy.PrivacyAccountant | None = None
        max_steps = None
        if c.dp_enabled:
            placement = privacy.validate_placement(c.dp, self.strategy.needs_hub, c.secure_agg)
            # dp_test_seed is for tests only: a seeded stream is no protection at all
            seed = None if c.dp_test_seed < 0 else c.dp_test_seed.to_bytes(8, "little") + self.id.to_bytes(8, "little")
            self.noise = privacy.SecureNoise(deterministic_seed=seed)
            k = privacy.releases_per_round(placement, self.strategy.overlapping_groups, len(self.neighbours))
            self.accountant = privacy.PrivacyAccountant(c.dp_noise, 1.0, c.dp_delta, c.dp_unit, k)
            if c.dp_budget > 0:
                max_steps = self.accountant.max_steps(c.dp_budget)
                if max_steps == 0:
                    log.warning("node %d: one round costs epsilon %.3f, above the budget %.3f: the node will never share",
                                self.id, self.accountant.epsilon_after(1), c.dp_budget)
        nodes, everyone = topology.members(self.graph)  # shared by the nodes of a process
        self.schedule = Schedule(c.seed, nodes, c.participation, self.hub, c.fedavg_sample, max_steps, everyone)
        self._codec = None
        if c.compression != "none":
            seed = [_CODEC_SALT, c.seed, self.id]
            self._codec = SharedVectorCodec(COMPRESSION_BITS[c.compression], self.trainer.num_params, seed)
        self._budget_logged = False

    # -- life cycle ---------------------------------------------------------------------------

    def run(self) -> list[RoundRecord]:
        """Run every round (resuming from a checkpoint if there is one); returns the records.

        Blocks this thread: `lifecycle`'s waits become the transport's own receive calls. Returns
        no records when the checkpoint says every round is done already. Raises
        `CheckpointRefused` (before any socket opens) when the checkpoints cannot be resumed from.
        """
        return drive(self.lifecycle(), self.transport.recv, self.meter)

    def lifecycle(self) -> Life:
        """The node's whole life as a generator, so one thread can run many nodes (`p2pfl.host`).

        It yields how long it is willing to wait (seconds) and is sent what arrived meanwhile: the
        next message its transport delivered, or None once that time has passed. Its return value
        is `run`'s. The node itself never blocks: whoever drives it owns the waiting.
        """
        records: list[RoundRecord] = []
        r = self._restore() + 1
        if r > self.config.rounds:
            # Restarted after its last round: the neighbours are done too, so waiting for them
            # would only run into startup_timeout. Nothing to do.
            log.warning("node %d: the checkpoint of round %d completes the run's %d rounds; nothing left to do",
                        self.id, r - 1, self.config.rounds)
            return records
        self.transport.start()
        try:
            self._t0 = time.monotonic()
            r = yield from self._await_neighbours(r)
            while r <= self.config.rounds:
                record = yield from self._round(r)  # its round may be a later one (`_jump_target`)
                records.append(record)
                self._checkpoint(record.round)
                r = self._next_round(record.round)
            yield from self._farewell()
        finally:
            self.transport.close(linger=FINAL_LINGER)
        return records

    def _farewell(self) -> Waits[None]:
        """Say we are done, and keep reading until every live neighbour is done too (bounded).

        Exiting at once can cost a neighbour its last round: our last model may still sit in the
        kernel's send buffer (a slow or shaped link), and closing a TCP socket that holds unread
        input makes Linux answer with a reset that throws that buffer away. A neighbour says
        "done" only after its last round, so once every live neighbour has, nothing of ours is
        still needed. Bounded by one round's deadline plus `FINAL_LINGER` (a neighbour that died
        in the last rounds never says it).
        """
        last = self.config.rounds
        done = Message(Kind.HEARTBEAT, self.id, last, meta={"done": True})
        self._send_all([(j, done) for j in self.neighbours])
        deadline = time.monotonic() + self.config.round_timeout + FINAL_LINGER
        while not self._liveness.expected() <= self._done and (remaining := deadline - time.monotonic()) > 0:
            msg = yield remaining
            if msg is not None:
                self._admit(msg, last)  # late secure reveals go to the finished round; the rest is read, not used

    def _await_neighbours(self, start: int) -> Waits[int]:
        """Meet the neighbours (bounded by `startup_timeout`); returns the round to run.

        Two steps: a hello ("I am up") and, once every neighbour is heard, a ready ("all my
        neighbours are up"). A node starts when every neighbour is ready, so its whole two-hop
        neighbourhood (the co-members of secure aggregation groups) is up: without this, nodes
        that start seconds apart (importing torch takes a while) burn their first deadlines.
        Neighbours already running answer a hello with their round (a sync; in plain mode also
        their model): a node that restarts behind them catches up (`_catch_up`) instead of
        dragging stale rounds and weights into the next averages. A hello can be lost (a
        neighbour agreeing a new session with a restarted process, say), so the neighbours we hear
        but that have not answered are asked again every `HELLO_RESEND` seconds (one not up yet
        gets our first hello, or says hello itself, when it comes).
        """
        self._say_hello(start, self.neighbours)
        everyone, said_ready = set(self.neighbours), False
        deadline = time.monotonic() + self.config.startup_timeout
        resend = time.monotonic() + HELLO_RESEND
        while not everyone <= self._ready and (remaining := deadline - time.monotonic()) > 0:
            if not said_ready and everyone <= self._liveness.heard:
                ready = Message(Kind.HEARTBEAT, self.id, 0, meta={"ready": True})
                self._send_all([(j, ready) for j in self.neighbours])
                said_ready = True
            if time.monotonic() >= resend:
                self._say_hello(start, sorted((everyone & self._liveness.heard) - self._ready - set(self._syncs)))
                resend = time.monotonic() + HELLO_RESEND
            msg = yield min(remaining, max(resend - time.monotonic(), 0.0))
            if msg is not None:
                self._admit(msg, start - 1)
        if not everyone <= self._ready:
            log.warning("node %d: neighbours %s were not ready within %.0fs; starting without them",
                        self.id, sorted(everyone - self._ready), self.config.startup_timeout)
        self._running = True
        return self._catch_up(start)

    def _say_hello(self, start: int, to: list[int]) -> None:
        hello = Message(Kind.HEARTBEAT, self.id, 0, meta={"hello": True, "round": start})
        self._send_all([(j, hello) for j in to])

    def _catch_up(self, start: int) -> int:
        """The round to run first: `start`, or the neighbours' round if they are ahead of us.

        Plain mode adopts their round and the average of the models their syncs carried.
        Under secure aggregation no message carries a single node's model, so a sync holds the
        round only: we adopt the round and keep our own (checkpointed) model, and the next
        secure round gives us the secure aggregate of our neighbours (`_adopt_round_only`).
        """
        ahead = {j: sync for j, sync in self._syncs.items() if sync[0] > start}
        if not ahead:
            return start
        target = max(rnd for rnd, _ in ahead.values())
        if self.config.secure_agg:
            self._adopt_round_only(start, target, sorted(ahead))
        else:
            delta = np.mean([d for _, d in ahead.values() if d is not None], axis=0).astype(np.float32)
            self.trainer.set_flat(self.reference + delta)
            self._delta = delta
            log.warning("node %d: neighbours are at round %d, we were at %d; adopting their average model",
                        self.id, target, start)
        self._drop_skipped(self._window.skip_to(target))
        return target

    def _adopt_round_only(self, start: int, target: int, ahead: list[int]) -> None:
        """Secure catch-up: say what happens to our model, since no neighbour sent us theirs.

        Our model changes only through a secure round: mixed with the sum of at least
        `min_contributors` inputs (gossip: our neighbours'; FedAvg: the hub's average of the
        leaves), or, when that round fails safely, not at all. A node with fewer neighbours than
        the floor can never get such a sum: its catch-up to their models is refused.
        """
        c = self.config
        log.warning("node %d: neighbours %s are at round %d, we were at %d; secure aggregation: adopting their round, "
                    "not a model (a sync carries none)", self.id, ahead, target, start)
        if self.hub is None and len(self.neighbours) < c.min_contributors:
            log.warning("node %d: catch-up to the neighbours' models refused: %d neighbour(s), below the privacy floor "
                        "of %d; we keep our own model", self.id, len(self.neighbours), c.min_contributors)
            return
        source = "the hub's secure average" if self.hub is not None and self.id != self.hub else \
            "the secure aggregate of our neighbours"
        log.warning("node %d: we keep our own model until round %d mixes it with %s (at least %d contributors); "
                    "if that round fails safely we keep our own model", self.id, target, source, c.min_contributors)

    def _restore(self) -> int:
        """Load the newest good checkpoint, if any; returns the last completed round (0 if none).

        Raises `CheckpointRefused` rather than start over silently when the directory holds
        checkpoints but none is usable (corrupted, unreadable, or another node's or model's):
        starting from round 1 must be asked for (`p2pfl node --fresh` discards them).
        """
        if self._store is None:
            return 0
        store = self._store
        found = store.load_latest()
        if found is None:
            bad = store.unusable or [f"{p} (set aside as corrupted by an earlier start)" for p in store.quarantined()]
            if bad:
                raise CheckpointRefused(f"{store.directory}: no usable checkpoint ({len(bad)} unusable, e.g. {bad[0]}); "
                                        "rerun with --fresh to discard them and start from round 1")
            return 0
        r, state = found
        owner, size = state.meta.get("node"), state.meta.get("num_params")
        if owner != self.id:
            raise CheckpointRefused(
                f"{store.directory}: its checkpoint of round {r} was written by node {owner}, not node {self.id}: "
                f"point --checkpoint-dir at the directory node {self.id} used before, or rerun with --fresh to discard it")
        if size != self.trainer.num_params:
            raise CheckpointRefused(
                f"{store.directory}: its checkpoint of round {r} holds a {size}-parameter model, this task's has "
                f"{self.trainer.num_params}: resume with the task it was written for, or rerun with --fresh to discard it")
        try:
            self.trainer.load_state_dict(state.trainer)
        except (RuntimeError, KeyError, ValueError) as exc:  # right count, wrong shapes or names: not this model's
            raise CheckpointRefused(f"{store.directory}: its checkpoint of round {r} does not fit this task's model "
                                    f"({str(exc).splitlines()[0]}): rerun with --fresh to discard it") from exc
        self._delta = self.trainer.get_flat() - self.reference
        log.warning("node %d: resumed from the checkpoint of round %d", self.id, r)
        return r

    def _checkpoint(self, r: int) -> None:
        if self._store is not None and (r % self.config.checkpoint_every == 0 or r == self.config.rounds):
            meta = {"node": self.id, "num_params": self.trainer.num_params, "seed": self.config.seed}
            self._store.save(r, NodeState(trainer=self.trainer.state_dict(), meta=meta))

    def _next_round(self, r: int) -> int:
        """r + 1, or further if neighbours have moved ahead of us (after a partition heals, say)."""
        nxt, skipped = self._window.next_round(r, self._owes)
        if nxt > r + 1:
            log.warning("node %d: neighbours are at round %d; skipping from %d to catch up", self.id, nxt, r + 1)
            self._announce_skip(r, nxt)
            self._skipped_to = nxt
        self._drop_skipped(skipped)
        return nxt

    def _announce_skip(self, after: int, r: int) -> None:
        """Tell every neighbour we go on at round `r` after round `after`: one that runs a round
        between stops waiting for us in it at once (a secure group would otherwise wait out its
        deadlines for a member that never comes, and hold up that neighbour's catch-up)."""
        self._send_all([(j, self._probe(r, after=after)) for j in self.neighbours])

    def _owes(self, j: int, r: int) -> bool:
        """Whether neighbour j owes us a message in round r (the strategy's word, this round's context)."""
        assert self._ctx is not None
        adjacency, _ = self._round_graph(r)
        return j in self.strategy.senders(replace(self._ctx, round=r, adjacency=adjacency,
                                                  active=self.schedule.active(r)))

    def _round_graph(self, r: int) -> tuple[Mapping[int, tuple[int, ...]], Mapping[int, float]]:
        """Round r's graph (every node's neighbours) and this node's Metropolis-Hastings row of it:
        the fixed graph's, or the one a time-varying topology draws for r (alike on every node)."""
        if self._time_varying is None:
            return self._adjacency, self.weights
        return self._time_varying.adjacency_at(r), self._time_varying.weights_at(r, self.id)

    def _drop_skipped(self, skipped: list[Dropped]) -> None:
        for d in skipped:
            self._drop(d.reason, d.detail, d.msg.sender)

    # -- one round ----------------------------------------------------------------------------

    def _round(self, r: int) -> Waits[RoundRecord]:
        started, cpu_started = time.monotonic(), self.meter.now()
        self._liveness.new_round()
        active = self.schedule.active(r)
        takes_part = self.id in active
        self._log_budget(r, takes_part)
        start = self.trainer.get_flat() if self.config.dp_enabled and takes_part else None
        steps_before = self._steps
        train_loss = self.trainer.train() if takes_part else None
        train_time = time.monotonic() - started
        trained = self.trainer.get_flat() - self.reference if self.observer is not None else None
        public_start = self._delta
        own, fallback = self._contribution(takes_part, start)
        ctx = self._ctx = self._context(r, own, fallback, active, self._steps - steps_before, r == self._skipped_to)
        protocol = self.strategy.protocol(ctx)
        jump = yield from self._exchange(protocol, r)
        while jump is not None:  # invited far ahead mid-exchange: this exchange becomes that round's
            log.warning("node %d: neighbours are at round %d; running round %d's exchange as round %d to catch up",
                        self.id, jump, r, jump)
            self._announce_skip(r - 1, jump)  # round r is given up: nothing more of it comes from us
            r = jump
            self._drop_skipped(self._window.skip_to(r))
            ctx = self._ctx = self._context(r, own, fallback, active, self._steps - steps_before, True)
            protocol = self.strategy.protocol(ctx)
            jump = yield from self._exchange(protocol, r)
        new_delta = protocol.result()
        protocol.release()
        self._finished = protocol
        self._prepared = protocol.prepared_next()  # e.g. secure gossip's next share phase, done in this one
        self.trainer.set_flat(self.reference + new_delta)
        self._delta = new_delta
        if self.observer is not None and trained is not None:
            self.observer.round_done(RoundSeen(r, own, public_start, new_delta, trained, dict(ctx.weights),
                                               protocol.arrived(), protocol.failure_reason or "ok"))
        self._update_liveness(r, self.strategy.senders(ctx))
        test_loss = test_acc = local_acc = None
        if r % self.config.eval_every == 0 or r == self.config.rounds:
            test_loss, test_acc, local_acc = self._evaluate(final=r == self.config.rounds)
        stats = self.transport.stats
        record = RoundRecord(
            round=r, node=self.id, train_loss=None if train_loss is None else float(train_loss),
            test_loss=test_loss, test_acc=test_acc,
            bytes_sent=stats.bytes_sent, bytes_received=stats.bytes_received,
            wall_time=time.monotonic() - self._t0, round_time=time.monotonic() - started, train_time=train_time,
            cpu_time=self.meter.now() - cpu_started,
            arrived=protocol.arrived(), heard=protocol.heard(), dropped=dict(stats.dropped), delta=new_delta,
            aggregation=self._outcome(protocol), epsilon=self._epsilon(r), participated=takes_part,
            links={str(j): list(v) for j, v in sorted(stats.links.items())},
            local_acc=local_acc,
        )
        log.info("node %d round %d: loss %s acc %s arrived %d/%d", self.id, r,
                 "-" if train_loss is None else f"{train_loss:.4f}",
                 "-" if test_acc is None else f"{test_acc:.3f}", record.arrived, len(ctx.neighbours))
        if self.on_round is not None:
            self.on_round(record)
        record.delta = None  # a model-sized copy: only `on_round` needs it, the records list must not keep it
        return record

    def _evaluate(self, final: bool) -> tuple[float, float, float | None]:
        """(test loss, test accuracy, accuracy on the node's own test split or None).

        Rounds before the last evaluate on the fixed seeded sample of the test set (`eval_sample` rows, the same
        on every node: their figures stay comparable); the last round on the whole test set.
        """
        data = self.task.dataset
        rows = None if final else self._eval_rows
        x, y = (data.x_test, data.y_test) if rows is None else (data.x_test[rows], data.y_test[rows])
        test_loss, test_acc = self.trainer.evaluate(x, y)
        local_acc = None
        if self._local_test is not None:
            local_acc = self.trainer.evaluate(*self._local_test)[1]
        return test_loss, test_acc, local_acc

    def _outcome(self, protocol: RoundProtocol) -> str:
        reason = protocol.failure_reason
        if reason:
            log.warning("node %d round %d: secure aggregation failed safely (%s); keeping our own model",
                        self.id, protocol.round, reason)
            self.transport.count_drop(f"secagg_{reason}")
            return str(reason)
        return "ok"

    def _update_liveness(self, r: int, senders: frozenset[int]) -> None:
        """Count rounds each neighbour stayed silent; at `down_after` we stop waiting for it.

        Only a neighbour that owed us a message this round (`Strategy.senders`) can miss it: a
        FedAvg leaf that sat the round out had nothing to send the hub.
        """
        for j in self._liveness.end_round(senders):
            log.warning("node %d: neighbour %d silent for %d rounds, marked down (round %d)",
                        self.id, j, self._liveness.missed[j], r)
            # what we queued for it while it was silent is old by the time its link is back
            self.transport.discard_queued(j)

    # -- what the node shares -------------------------------------------------------------------

    def _contribution(self, takes_part: bool, start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(the vector this node puts into the round, what to keep if the round fails (None: it)).

        Without DP: the model's delta from the reference, as ever. With DP the round starts from
        the public state `self._delta`; the round update (trained model - `start`) is clipped
        and, for local DP, noised here. For central and distributed DP the protocol's noise
        protects it, so a failed round falls back to the public state, never to the un-noised
        update.
        """
        c = self.config
        trained = self.trainer.get_flat()
        if takes_part and not np.isfinite(trained).all():
            self._diverged()
            return self._delta.copy(), None  # the last round's result: public, and finite
        if not c.dp_enabled:
            return trained - self.reference, None
        if not takes_part:
            return self._delta.copy(), None  # public: the last round's result
        assert start is not None and self.noise is not None
        update = trained - start
        if c.dp == "local":
            std = privacy.noise_std("local", c.dp_noise, c.dp_clip)
            noisy, _ = privacy.privatize(update, c.dp_clip, std, self.noise, grid=privacy.grid_for(std))
            return self._delta + noisy, None
        clipped, _ = privacy.clip(update, c.dp_clip)
        return self._delta + clipped, self._delta

    def _diverged(self) -> None:
        """Local training ran into NaN/Inf (a learning rate too high, say): nothing of it can be
        shared, clipped or noised. The node puts its last averaged model into the round instead
        (the round's result then replaces the broken one) and starts its optimizer afresh, whose
        momentum holds the same NaNs; it says so each time, and counts it as `diverged`."""
        log.error("node %d: local training diverged (NaN/Inf in the model): this round shares the last averaged "
                  "model instead and the optimizer starts afresh; a lower --lr (or --dp-clip) avoids it", self.id)
        self.transport.count_drop("diverged")
        self.trainer.optimizer.state.clear()

    def _samples(self, takes_part: bool) -> int:
        """FedAvg weight: the shard size, or with DP a public constant (|D| would leak: equal weights)."""
        if self.id == self.hub and not takes_part:
            return 0
        return self._secagg_params.max_samples if self.config.dp_enabled else self.samples

    def _central_noise(self, avg: np.ndarray, max_weight: float) -> np.ndarray:
        c = self.config
        assert self.noise is not None
        std = privacy.noise_std("central", c.dp_noise, c.dp_clip, max_weight=max_weight)
        return privacy.add_noise(avg, std, self.noise, privacy.grid_for(std)).astype(np.float64)

    def _distributed_noise(self) -> DistributedNoise:
        """Each leaf's share: any unmasked sum has at least min_contributors inputs (the floor)."""
        c = self.config
        assert self.noise is not None
        std = privacy.noise_std("distributed", c.dp_noise, c.dp_clip, contributors=c.min_contributors, max_weight=1.0)
        return DistributedNoise(std, self.noise.discrete_gaussian)

    def _epsilon(self, r: int) -> float | None:
        if self.accountant is None:
            return None
        return self.accountant.epsilon_after(self.schedule.steps(self.id, r))

    def _log_budget(self, r: int, takes_part: bool) -> None:
        if takes_part or self._budget_logged or not self.schedule.exhausted(self.id, r - 1):
            return
        self._budget_logged = True
        assert self.accountant is not None
        steps = self.schedule.steps(self.id, r - 1)
        log.warning("node %d: privacy budget spent (epsilon %.3f of %.3f; one more round would make it %.3f): from "
                    "round %d on it trains and shares no new update", self.id, self.accountant.epsilon_after(steps),
                    self.config.dp_budget, self.accountant.epsilon_after(steps + 1), r)

    def _context(self, r: int, own: np.ndarray, fallback: np.ndarray | None, active: frozenset[int],
                 steps: int, catching_up: bool) -> RoundContext:
        """What the strategy needs to build round r's protocol; DP noise as the placement says.

        The round waits for the neighbours not marked down; one the node skipped to (`catching_up`)
        for every neighbour: it meets the other side of a healed partition there, whose nodes this
        side marked down during the cut and may not have heard again yet (a link's two directions
        come back separately), so a secure group fixed without them would fail. A neighbour that
        is really gone costs that one round its deadline.
        """
        c = self.config
        secure = c.secure_agg
        adjacency, weights = self._round_graph(r)
        return RoundContext(
            node_id=self.id, round=r, last_round=c.rounds, adjacency=adjacency, weights=weights,
            hub=self.hub, own=own, start=self._delta, fallback=fallback, samples=self._samples(self.id in active),
            local_steps=steps, expected=frozenset(self.neighbours) if catching_up else self._liveness.expected(),
            active=active, prepared=self._prepared,
            codec=self._codec, central_noise=self._central_noise if c.dp == "central" else None,
            distributed_noise=self._distributed_noise() if c.dp == "distributed" and secure else None,
            secagg=self._secagg_params if secure else None, secret=self._secret if secure else None,
            time_varying=self._time_varying is not None,
        )

    def _count_step(self, *_: object) -> None:
        self._steps += 1

    def _secret(self, peer: int, context: bytes) -> bytes:
        """End-to-end key shared with `peer` (up to two hops away), from the cluster's static keys."""
        key = (peer, context)
        if key not in self._secrets:
            self._secrets[key] = pairwise_key(self._private_key, self.id, self._members[peer].public_key, peer, context)
        return self._secrets[key]

    def _exchange(self, protocol: RoundProtocol, r: int) -> Waits[int | None]:
        """Run `protocol` to completion (None: its `result()` is ready): event-driven receive, a
        deadline per phase; or stop it for a later round the node was invited to, returned
        (`_jump_target`)."""
        self._tell_restarts(protocol)
        self._withheld.clear()  # the last round's are stale now
        self._told_moved_on.clear()
        self._probe_down(r)
        self._send_all(protocol.start())
        for msg in self._window.take(r):
            self._liveness.hear(msg.sender)
            self._feed(protocol, msg)
        for j in self.neighbours:
            self._tell_moved_on(protocol, j, r)
        phase, deadline = protocol.phase, time.monotonic() + self.config.round_timeout
        while not protocol.finished():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.info("node %d round %d: phase %d deadline passed", self.id, r, protocol.phase)
                self._send_all(protocol.on_deadline())
                phase, deadline = protocol.phase, time.monotonic() + self.config.round_timeout
                continue
            msg = yield remaining
            self._tell_restarts(protocol)  # first: a new process's messages come after its restart
            if msg is not None:
                self._deliver(protocol, msg, r)
                if (target := self._jump_target(protocol, r)) is not None:
                    return target
            if protocol.phase != phase:
                phase, deadline = protocol.phase, time.monotonic() + self.config.round_timeout
        return None

    def _jump_target(self, protocol: RoundProtocol, r: int) -> int | None:
        """The later round to run this exchange as, if the node should catch up now rather than
        at the end of round r (`_next_round`'s skip, one round run later): a neighbour invited us
        (`join`: a partition's other side that heard us again) to a round two or more ahead, with
        nothing of ours owed for r + 1 (the nearest such invitation: see `RoundWindow.next_round`);
        the neighbours survive our leaving this round (`RoundProtocol.retargetable`: plain and
        secure gossip); and the schedule has the same nodes take part there. The model the node
        trained this round is what it brings to that one. Only an invitation moves it mid-round,
        or a neighbour's word that it skipped there (said once, as it skips: its half of the
        partition follows the node that heard the other half first): probes queued while the link
        was down arrive in a burst, oldest first, and each sighting would move it again (the
        end-of-round skip takes them all)."""
        if not protocol.retargetable:  # first: this runs for every delivered message
            return None
        target = min((t for t in self._window.invited.values() if t >= r + 2), default=None)
        if target is None or not self._window.gap_after(r, self._owes) or self.schedule.active(target) != self.schedule.active(r):
            return None
        return target

    def _deliver(self, protocol: RoundProtocol, msg: Message, r: int) -> None:
        """One delivered message while `protocol` runs round `r`: what it says of its sender, then the message.

        A sender marked down and now heard again is told to the round (which may wait for it after
        all), and told at once which round of ours it can join (a probe: it skips to it, see
        `_probe_down`); one seen in a later round, or that says it takes no part in this one (a
        skip, or an invitation to its next round), is told as moved on (a partition's lagging half
        skipped this round, or it is done).
        """
        j = msg.sender
        back = self._liveness.is_down(j)
        rejoin = protocol.rejoin_round() if back else 0
        admitted = self._admit(msg, r, rejoin)
        if back:
            self._send_all(protocol.peer_back(j) + [(j, self._probe(r, rejoin))])
        if admitted:
            self._feed(protocol, msg)
        else:  # a later round's message, or a probe that says it skips ours
            self._tell_moved_on(protocol, j, r)

    def _tell_moved_on(self, protocol: RoundProtocol, j: int, r: int) -> None:
        """Tell round `r` that neighbour j was seen in a later round (each newer sighting once).
        One that said it skipped round r counts as two rounds on: nothing of r comes from it,
        not even the late traffic a finished round still sends."""
        seen = self._seen(j)
        if self._window.never_runs(j, r):
            seen = max(seen, r + 2)
        if seen > r and seen > self._told_moved_on.get(j, r):
            self._told_moved_on[j] = seen
            self._send_all(protocol.peer_moved_on(j, seen))

    def _tell_restarts(self, protocol: RoundProtocol) -> None:
        """Tell the round which neighbours' processes were replaced: what the old ones held of it
        (shares, a prepared setup, owed reveals) will never come, so it need not wait for them."""
        for j in sorted(self.transport.restarted()):
            self._window.forget(j)  # its new process starts where its checkpoint says
            self._told_moved_on.pop(j, None)  # and a sighting of it is news even in a round its old one was seen in
            self._send_all(protocol.peer_restarted(j))

    def _admit(self, msg: Message, r: int, rejoin: int = 0) -> bool:
        """True if `msg` belongs to round `r`; keep later rounds' messages, drop the rest (counted).

        Any authenticated message proves its sender alive. A neighbour ahead of us (after a
        partition, say) is remembered so we can catch up at the end of this round; a round
        beyond the run's budget cannot be honest and is dropped. `rejoin`: the first of our
        rounds a sender marked down takes part in once heard again (`RoundProtocol.rejoin_round`).
        """
        back = self._liveness.is_down(msg.sender)
        self._liveness.hear(msg.sender)
        current = self._place(msg, r)
        if back:  # after placing it: its round says what of ours it still needs
            self._welcome_back(msg.sender, rejoin)
        return current

    def _place(self, msg: Message, r: int) -> bool:
        """`_admit`'s part after liveness: a heartbeat is taken here, the rest goes where its round says."""
        if self.observer is not None:
            self.observer.received(msg)  # everything authenticated and decrypted, as a curious node would keep it
        if msg.kind == Kind.HEARTBEAT:
            self._on_heartbeat(msg, r)
            return False
        verdict = self._window.place(msg, r, self._takes_late)
        if verdict.place is Place.LATE:
            # Expected traffic after the round ended (secure aggregation: the surplus reveals of
            # an aggregator that unmasked early), not a stale message. The finished protocol takes
            # it (and refuses anything else, counted).
            assert self._finished is not None
            self._feed(self._finished, msg)
        elif verdict.place is Place.DROPPED:
            self._drop(verdict.reason, verdict.detail, msg.sender)
        return verdict.place is Place.CURRENT

    def _welcome_back(self, j: int, rejoin: int) -> None:
        """`j`, marked down, was heard again: what we withheld from it this round goes now, unless `j`
        has been seen in a later round (it would only drop it as stale) or is invited to a later
        one (`rejoin`: a secure round fixed without it): a message of this round would only tell
        it that we run a round it is not part of, and hold it there (no gap to skip)."""
        log.info("node %d: neighbour %d heard again", self.id, j)
        self._probed.discard(j)  # should it go down again, it gets a probe again
        past = max(self._window.latest.get(j, 0), rejoin)
        self._send_all([(j, msg) for msg in self._withheld.pop(j, []) if msg.round >= past])

    def _seen(self, j: int) -> int:
        """The latest round neighbour j was seen in; one that is done counts as past the last round
        (its farewell feeds late traffic to the last round only)."""
        return self.config.rounds + 1 if j in self._done else self._window.latest.get(j, 0)

    def _probe_down(self, r: int) -> None:
        """Tell each neighbour marked down our round, once while it stays down, and nothing more
        (see `_send_all`).

        A probe is a heartbeat a few dozen bytes long: what a dead link holds when it comes back is
        this one message, not models of rounds long gone. It proves us alive (the neighbour hears us
        again and invites us to its round: `_deliver`) and says that we sent all we will send for
        its earlier rounds (it stops waiting for us in them). One, not one per round: libzmq queues
        what is sent on a link that is down, so a probe per round arrived after a long cut as a
        burst of old rounds that filled the queue (later sends, such as our invitation, were dropped
        as `send_queue_full`) and, oldest first, moved the neighbour's catch-up to rounds long past.
        """
        down = [j for j in self.neighbours if self._liveness.is_down(j) and j not in self._probed]
        self._probed.update(down)
        self._send_all([(j, self._probe(r)) for j in down])

    def _probe(self, r: int, join: int | None = None, after: int | None = None) -> Message:
        """A probe of round `r`; `join`: the round the neighbour we heard again takes part in with us;
        `after`: the round we ran before `r` (a skip: we run none between)."""
        meta: dict[str, object] = {"probe": True}
        if join is not None:
            meta["join"] = join
        if after is not None:
            meta["after"] = after
        return Message(Kind.HEARTBEAT, self.id, r, meta=meta)

    def _takes_late(self, msg: Message) -> bool:
        late = self._finished
        return late is not None and msg.round == late.round and late.takes_late(msg)

    def _on_heartbeat(self, msg: Message, r: int) -> None:
        """Answer a hello (rate-limited) with a sync; remember the sync answers we get."""
        if msg.meta.get("hello") is True:
            self._answer_hello(msg.sender, r)
        elif msg.meta.get("ready") is True:
            self._ready.add(msg.sender)
        elif msg.meta.get("done") is True:
            self._done.add(msg.sender)  # it ran its last round (`_farewell`)
        elif msg.meta.get("probe") is True:
            self._window.note(msg.sender, msg.round)  # where it is (`_probe_down`)
            join = msg.meta.get("join")
            if type(join) is int and msg.round <= join <= msg.round + 1:  # only ever this round or the next
                if join > msg.round:  # its round was fixed without us, it sends us nothing for it (`_welcome_back`):
                    self._window.skipped(msg.sender, msg.round - 1, join)  # as if skipped (also an invitation)
                else:
                    self._window.invite(msg.sender, join)
            after = msg.meta.get("after")
            if type(after) is int:
                self._window.skipped(msg.sender, after, msg.round)  # it sends nothing for the rounds between
        elif msg.meta.get("sync") is True:
            self._take_sync(msg)

    def _answer_hello(self, j: int, r: int) -> None:
        """Tell `j` our round (plain mode: and our model), at most once per round of ours and `HELLO_MIN_INTERVAL`.

        The protocol needs an answer in two states only: while we both start (meeting) and when
        `j` restarts while we run (it learns our round). Either takes one answered hello (a
        starting node repeats only a hello that got no answer); more are counted as `hello_rate`
        drops and not answered, so a neighbour cannot make us send on its demand. If our answer
        itself is lost, `j`'s repeated hello is answered in our next round (in start-up, our
        ready tells it we are up). Under secure aggregation the sync carries no tensor at all:
        our model after a failed secure round is our own trained input.
        """
        now = time.monotonic()
        last = self._hellos.get(j)
        if last is not None and (last[0] == r or now - last[1] < HELLO_MIN_INTERVAL):
            self._drop("hello_rate", f"hello from {j}: already answered in round {last[0]}, {now - last[1]:.2f}s ago", j)
            return
        self._hellos[j] = (r, now)
        tensors = {} if self.config.secure_agg else {DELTA: self._delta}
        meta = {"sync": True, "running": self._running}
        self.transport.send(j, Message(Kind.HEARTBEAT, self.id, max(r, 0), meta=meta, tensors=tensors))

    def _take_sync(self, msg: Message) -> None:
        """Remember a neighbour's round (plain mode: and its model) for `_catch_up`."""
        if msg.meta.get("running") is True:
            self._ready.add(msg.sender)  # it is past its own start-up: as good as ready
        if msg.round > self.config.rounds:
            self._drop("wrong_round", f"sync from {msg.sender} claims round {msg.round} of {self.config.rounds}", msg.sender)
            return
        if self.config.secure_agg:
            if msg.tensors:  # an honest secure node never sends one: do not even look at it
                self._drop("sync_with_model", f"sync from {msg.sender} carries {sorted(msg.tensors)} under secure aggregation",
                           msg.sender)
                return
            self._syncs[msg.sender] = (msg.round, None)
            return
        try:
            self._syncs[msg.sender] = (msg.round, check_vector(msg, DELTA, self.trainer.num_params))
        except Rejected as exc:
            self._drop(exc.reason, str(exc), msg.sender)

    def _feed(self, protocol: RoundProtocol, msg: Message) -> None:
        try:
            out = protocol.on_message(msg)
        except Rejected as exc:
            self._drop(exc.reason, str(exc), msg.sender)
            out = exc.reply
        self._send_all(out)

    def _send_all(self, outbound: list[Outbound]) -> None:
        """Send each message; one for a neighbour marked down waits in `_withheld` (heartbeats go)."""
        for to, msg in outbound:
            if msg.kind != Kind.HEARTBEAT and self._liveness.is_down(to):
                self._withheld.setdefault(to, []).append(msg)
                continue
            self.transport.send(to, msg)

    def _drop(self, reason: str, detail: str, sender: int | None = None) -> None:
        self.transport.drop(reason, detail, sender)
