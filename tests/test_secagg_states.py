"""The stage machines of the secure-aggregation roles (`p2pfl.secagg.states`).

The tables themselves: every move not in a table raises `IllegalTransition`, DONE is final, every
stage is reachable and can end. Then each legal path through a round, walked by a member role and
an aggregator role driven by hand (no adapter, no router): their stages are read after every
message and turned back into moves, which must be exactly the expected path; together the walks
and the endings cover every move of both tables.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import Enum

import numpy as np
import pytest

from p2pfl.fixedpoint import FixedPoint
from p2pfl.messages import Message, Outbound
from p2pfl.secagg import AggStage, Aggregator, GroupSpec, IllegalTransition, Member, MemberStage, SecAggParams
from p2pfl.secagg.codec import STEP_ABORT, STEP_BUNDLE, STEP_PROOF, STEP_UNMASK, Bundle, decode_map, step_of
from p2pfl.secagg.states import AGGREGATOR_TRANSITIONS, MEMBER_TRANSITIONS, AggEvent, MemberEvent, advance
from test_secagg import make_secrets, seeded_rng

TABLES = [(MEMBER_TRANSITIONS, MemberStage, MemberEvent, MemberStage.NEW, MemberStage.DONE),
          (AGGREGATOR_TRANSITIONS, AggStage, AggEvent, AggStage.SHARES, AggStage.DONE)]
AGG = 0  # the aggregator's node id in the hand-driven group
ENDINGS = {"revealed": MemberEvent.REVEAL, "aborted": MemberEvent.ABORT, "timeout": MemberEvent.GIVE_UP,
           "global": MemberEvent.GLOBAL}

# --------------------------------------------------------------------------- the tables


@pytest.mark.parametrize("table,stages,events,start,done", TABLES)
def test_every_move_outside_the_table_raises(table, stages, events, start, done) -> None:
    for stage in stages:
        for event in events:
            if event in table[stage]:
                assert advance(table, stage, event) is table[stage][event]
            else:
                with pytest.raises(IllegalTransition):
                    advance(table, stage, event)


@pytest.mark.parametrize("table,stages,events,start,done", TABLES)
def test_done_is_final_and_every_stage_is_on_a_path_from_start_to_done(table, stages, events, start, done) -> None:
    assert set(table) == set(stages) and dict(table[done]) == {}
    reachable, frontier = {start}, [start]
    while frontier:
        for nxt in table[frontier.pop()].values():
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(stages)
    ends = {done}
    for _ in stages:  # every stage ends: DONE is reachable from it
        ends |= {s for s in stages if set(table[s].values()) & ends}
    assert ends == set(stages)


def test_the_tables_cannot_be_changed() -> None:
    with pytest.raises(TypeError):
        MEMBER_TRANSITIONS[MemberStage.DONE] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        AGGREGATOR_TRANSITIONS[AggStage.SHARES][AggEvent.UNMASK] = AggStage.DONE  # type: ignore[index]


def test_aggregator_stages_are_the_round_phases() -> None:
    assert [int(s) for s in AggStage] == [0, 1, 2, 3, 4]  # what `phase` reports (docs/secagg.md 6)


# --------------------------------------------------------------------------- one group by hand


class Group:
    """Aggregator 0 and members 1..n of one group, their messages delivered by hand.

    crash[u] = step: member u vanishes the first time it would send that step. hold(to, msg) ->
    True keeps a message back (in `held`). Each role lists the moves it made (`moves`).
    """

    def __init__(self, n: int = 4, verify: bool = True, crash: dict[int, str] | None = None,
                 hold: Callable[[int, Message], bool] | None = None) -> None:
        params = SecAggParams(verify_views=verify)
        ids = list(range(n + 1))
        secrets = make_secrets(ids)
        members = tuple(ids[1:])
        self.spec = GroupSpec(1, AGG, members, 16, FixedPoint(params.clip, 1.0, n, params.bits), params)
        rng = np.random.default_rng(0)
        self.members = {u: Member(self.spec, u, 1.0 / (n + 1), rng.standard_normal(16).astype(np.float32),
                                  secrets[u], seeded_rng(u)) for u in members}
        self.agg = Aggregator(self.spec)
        self.crash, self.dead = dict(crash or {}), set()
        self.hold = hold or (lambda to, msg: False)
        self.held: list[Outbound] = []

    def start(self, silent: frozenset[int] = frozenset()) -> Group:
        """Members not in `silent` send their shares; deliver everything."""
        for u, m in self.members.items():
            if u not in silent:
                self.deliver([m.start()])
        return self

    def deliver(self, outs: list[Outbound]) -> None:
        queue = deque(o for o in outs if self._sent(o))
        while queue:
            to, msg = queue.popleft()
            if to in self.dead:
                continue
            if self.hold(to, msg):
                self.held.append((to, msg))
                continue
            queue.extend(o for o in self._receive(to, msg) if self._sent(o))

    def deadline(self) -> None:
        self.deliver(self.agg.on_deadline())

    def _sent(self, out: Outbound) -> bool:
        sender, step = out[1].sender, out[1].meta["step"]
        if sender in self.dead or self.crash.get(sender) == step:
            self.dead.add(sender)
            return False
        return True

    def _receive(self, to: int, msg: Message) -> list[Outbound]:
        step, body = step_of(msg)
        if to == AGG:
            return self.agg.receive(step, msg, body)
        m = self.members[to]
        if step == STEP_BUNDLE:
            return m.on_bundle(body)
        if step == STEP_UNMASK:
            return m.on_unmask(body)
        if step == STEP_PROOF:
            return m.on_proof(body)
        assert step == STEP_ABORT
        m.on_abort(body)
        return []

    def moves(self, u: int) -> list[tuple[Enum, Enum]]:
        return self.agg.moves if u == AGG else self.members[u].moves


def path(start: Enum, *events: Enum) -> list[tuple[Enum, Enum]]:
    """The (stage, event) moves of walking `events` from `start` through the tables."""
    table = AGGREGATOR_TRANSITIONS if isinstance(start, AggStage) else MEMBER_TRANSITIONS
    out, stage = [], start
    for e in events:
        out.append((stage, e))
        stage = advance(table, stage, e)
    return out


A, M = AggEvent, MemberEvent
MEMBER_CLEAN = path(MemberStage.NEW, M.SHARE, M.BUNDLE, M.MASK, M.REVEAL)
MEMBER_CONFIRMED = path(MemberStage.NEW, M.SHARE, M.BUNDLE, M.MASK, M.CONFIRM, M.REVEAL)


def walk_clean(verify: bool = True) -> Group:
    return Group(verify=verify).start()


def walk_drop_after_shares() -> Group:
    g = Group(crash={4: "masked"}).start()  # the view drops 4: it must be confirmed
    g.deadline()  # closes the masked phase
    g.deadline()  # closes the confirmations (4 never confirms)
    return g


def walk_too_few_members() -> Group:
    g = Group().start(silent=frozenset({2, 3, 4}))  # only member 1 shares
    g.deadline()
    return g


def walk_privacy_floor() -> Group:
    g = Group(crash={2: "masked", 3: "masked", 4: "masked"}).start()
    g.deadline()
    return g


def walk_too_few_confirmations() -> Group:
    g = Group(crash={4: "masked", 3: "confirm"}).start()
    g.deadline()  # masked phase closes: the view drops 4
    g.deadline()  # 2 confirmations of the quorum of 3
    return g


def walk_too_few_reveals() -> Group:
    g = Group(crash={3: "reveal", 4: "reveal"}).start()
    g.deadline()
    return g


def walk_voided() -> Group:
    """A prepared group of two: member 1 masks, member 2's process is replaced before it did.
    Without 2 the group is below its floor, so it is abandoned for a fresh share phase of the
    round (the adapter makes that one), and member 1 is asked to share anew."""
    g = prepared(Group(n=2))
    g.deliver([g.members[1].start()])
    assert g.agg.voided_by(2) and not g.agg.voided_by(1)  # 1's input came: only a member without one voids it
    g.deliver(g.agg.abandon())
    assert g.members[1].outcome == "aborted:reshare"
    return g


# scenario -> (walk, {role: expected moves})
ROUNDS = {
    "clean": (walk_clean, {AGG: path(AggStage.SHARES, A.FIX_MEMBERS, A.ASK_REVEAL, A.UNMASK), 1: MEMBER_CLEAN}),
    "clean_unverified": (lambda: walk_clean(False),
                         {AGG: path(AggStage.SHARES, A.FIX_MEMBERS, A.ASK_REVEAL, A.UNMASK), 1: MEMBER_CLEAN}),
    "drop_confirmed": (walk_drop_after_shares,
                       {AGG: path(AggStage.SHARES, A.FIX_MEMBERS, A.ASK_CONFIRM, A.SEND_PROOFS, A.UNMASK),
                        1: MEMBER_CONFIRMED, 4: [(MemberStage.NEW, M.SHARE), (MemberStage.SHARED, M.BUNDLE),
                                                 (MemberStage.READY, M.MASK)]}),  # vanished with its input
    "too_few_members": (walk_too_few_members,
                        {AGG: path(AggStage.SHARES, A.FAIL), 1: path(MemberStage.NEW, M.SHARE, M.ABORT),
                         2: path(MemberStage.NEW, M.ABORT)}),
    "privacy_floor": (walk_privacy_floor,
                      {AGG: path(AggStage.SHARES, A.FIX_MEMBERS, A.FAIL),
                       1: path(MemberStage.NEW, M.SHARE, M.BUNDLE, M.MASK, M.ABORT)}),
    "too_few_confirmations": (walk_too_few_confirmations,
                              {AGG: path(AggStage.SHARES, A.FIX_MEMBERS, A.ASK_CONFIRM, A.FAIL),
                               1: path(MemberStage.NEW, M.SHARE, M.BUNDLE, M.MASK, M.CONFIRM, M.ABORT)}),
    "voided": (walk_voided, {AGG: path(AggStage.SHARES, A.FIX_MEMBERS, A.ABANDON),
                             1: path(MemberStage.NEW, M.SHARE, M.BUNDLE, M.MASK, M.ABORT)}),
    "too_few_reveals": (walk_too_few_reveals,
                        {AGG: path(AggStage.SHARES, A.FIX_MEMBERS, A.ASK_REVEAL, A.FAIL), 1: MEMBER_CLEAN}),
}


@pytest.mark.parametrize("name", sorted(ROUNDS))
def test_each_path_through_a_round_is_walked(name: str) -> None:
    walk, expected = ROUNDS[name]
    g = walk()
    assert g.agg.done
    for role, moves in expected.items():
        assert g.moves(role) == moves, (name, role)


def prepared(g: Group) -> Group:
    """`g` with its group prepared in the round before (pipelined setup): members READY, the aggregator MASKED."""
    for u, m in g.members.items():
        g.agg.take_shares(u, m.share().to_obj())  # as they ride in the previous round's masked inputs
    bundles = g.agg.prepare(set(g.members))
    assert g.agg.stage is AggStage.MASKED and g.agg.prepared and sorted(bundles) == sorted(g.members)
    for u, m in g.members.items():
        m.take_bundle(bundles[u].to_obj())  # as they ride in the previous round's last message
        assert m.stage is MemberStage.READY
    return g


def test_a_prepared_group_fixes_its_members_before_its_round() -> None:
    g = prepared(Group())
    for m in g.members.values():
        g.deliver([m.start()])  # a prepared membership starts with its masked input
    assert g.moves(AGG) == path(AggStage.SHARES, A.FIX_MEMBERS, A.ASK_REVEAL, A.UNMASK)
    assert g.moves(1) == path(MemberStage.NEW, M.SHARE, M.BUNDLE, M.MASK, M.REVEAL)


# --------------------------------------------------------------------------- endings at every stage


def member_at(stage: MemberStage) -> Member:
    """Member 1 of a hand-driven group, brought to `stage` through its own methods."""
    if stage is MemberStage.NEW:
        return Group().members[1]
    if stage is MemberStage.SHARED:
        g = Group(hold=lambda to, msg: msg.meta["step"] == STEP_BUNDLE).start()
        return g.members[1]  # bundles held: every member waits in SHARED
    if stage is MemberStage.READY:
        g = Group(hold=lambda to, msg: msg.meta["step"] == STEP_BUNDLE).start()
        to, msg = next(o for o in g.held if o[0] == 1)
        g.members[1].take_bundle(decode_map(msg.meta["body"], Bundle.KEYS))  # taken, not yet masked
        return g.members[1]
    if stage is MemberStage.MASKED:
        return Group(hold=lambda to, msg: msg.meta["step"] == STEP_UNMASK).start().members[1]
    g = Group(crash={4: "masked"}, hold=lambda to, msg: msg.meta["step"] == STEP_PROOF).start()
    g.deadline()
    g.deadline()  # proofs held: members wait in CONFIRMED
    return g.members[1]


ENDING_CALLS = {M.ABORT: lambda m: m.abort("round_timeout"), M.GIVE_UP: Member.give_up, M.GLOBAL: Member.take_global}


@pytest.mark.parametrize("stage", [s for s in MemberStage if s is not MemberStage.DONE])
@pytest.mark.parametrize("event", sorted(ENDING_CALLS, key=lambda e: e.value))
def test_a_membership_can_end_at_every_stage_and_only_once(stage: MemberStage, event: MemberEvent) -> None:
    m = member_at(stage)
    assert m.stage is stage
    ENDING_CALLS[event](m)
    assert m.done and m.outcome.split(":")[0] == {v: k for k, v in ENDINGS.items()}[event]
    for again in ENDING_CALLS.values():
        with pytest.raises(IllegalTransition):
            again(m)


def test_an_aggregator_fails_only_once() -> None:
    g = walk_too_few_members()
    with pytest.raises(IllegalTransition):
        g.agg.fail("round_timeout", "")
    assert g.agg.failure is not None and g.agg.failure.reason == "too_few_members"
    assert g.agg.failure.told == frozenset({1, 2, 3, 4})  # every member waits in the share phase


def test_the_walks_and_endings_cover_every_move_of_both_tables() -> None:
    walked = {move for _, expected in ROUNDS.values() for moves in expected.values() for move in moves}
    walked |= {(s, e) for s in MemberStage if s is not MemberStage.DONE for e in ENDING_CALLS}
    every = {(s, e) for table in (MEMBER_TRANSITIONS, AGGREGATOR_TRANSITIONS) for s in table for e in table[s]}
    assert walked == every
