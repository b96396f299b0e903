"""Fewer message steps: the pipelined setup and the variant without view verification.

Pipelined setup: round r+1's share phase rides in round r's last messages (masked inputs, and
unmask requests or, where the view must be confirmed, proofs). A view that drops no one needs no
confirmation in a dense group, so a fault-free round is three steps in both modes. Several rounds of
`SecureGossipRound` driven by the in-memory router of `test_secagg`, each round built with what
the previous one prepared (`prepared_next()`), as the node does.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from p2pfl.messages import Message
from p2pfl.secagg import Member, Prepared, SecAggParams, SecureGossipRound
from p2pfl.secagg.codec import RESHARE, Abort, secagg_message
from test_secagg import Router, assert_within_bound, circulant, make_secrets, mh_weights, seeded_rng, step_of

L = 200


class Cluster:
    """Nodes that run round after round, handing each round's prepared setup to the next."""

    def __init__(self, adj: dict[int, list[int]], rounds: int, seed: int = 0, params: SecAggParams | None = None) -> None:
        self.adj, self.rounds = adj, rounds
        self.params = params or SecAggParams()
        self.W = mh_weights(adj)
        self.secrets = make_secrets(adj)
        self.rngs = {i: seeded_rng(seed * 1000 + i) for i in adj}
        self.data = np.random.default_rng(seed)
        self.prepared: dict[int, Prepared | None] = {i: None for i in adj}

    def round(self, r: int, forget: frozenset[int] = frozenset(), forget_members: frozenset[int] = frozenset()):
        """Run round r; nodes in `forget` start it without their prepared setup (a restart), nodes in
        `forget_members` without that of their member roles only (lost unmask requests or proofs)."""
        xs = {i: self.data.standard_normal(L).astype(np.float32) for i in self.adj}
        prepared = {i: None if i in forget else self.prepared[i] for i in self.adj}
        for i in forget_members:
            kept = prepared[i]
            prepared[i] = Prepared(r, {}, kept.agg if kept is not None else None)
        protos = {
            i: SecureGossipRound(i, r, self.adj, self.W[i], xs[i], self.params, self.secrets[i], self.rngs[i],
                                 prepared=prepared[i], prepare_next=r < self.rounds)
            for i in self.adj
        }
        sent: list[Message] = []
        router = Router(protos, hold=lambda to, m: sent.append(m) or False).run()
        self.prepared = {i: p.prepared_next() for i, p in protos.items()}
        return protos, xs, router, Counter(step_of(m) for m in sent)


def round_two(adj: dict[int, list[int]], seed: int, forget: frozenset[int] = frozenset()):
    """A cluster after round 1, and its nodes' round-2 protocols (those in `forget` without their
    prepared setup), to be driven by hand: (cluster, inputs, protocols)."""
    cluster = Cluster(adj, rounds=4, seed=seed)
    cluster.round(1)
    xs = {i: cluster.data.standard_normal(L).astype(np.float32) for i in adj}
    protos = {i: SecureGossipRound(i, 2, adj, cluster.W[i], xs[i], cluster.params, cluster.secrets[i], cluster.rngs[i],
                                   prepared=None if i in forget else cluster.prepared[i]) for i in adj}
    return cluster, xs, protos


def tell_restart(router: Router, protos, adj: dict[int, list[int]], dead: int) -> None:
    """What each neighbour's transport says once `dead`'s new process has its sessions; no deadline may pass."""
    for j in adj[dead]:
        router.post(j, protos[j].peer_restarted(dead))
    router.deliver()
    assert router.deadlines == 0


@pytest.mark.parametrize("verify", [True, False])
def test_from_the_second_round_on_the_share_phase_rides_in_the_round_before(verify: bool) -> None:
    every_round = ("masked", "unmask", "reveal")  # no one drops: no view to confirm
    adj = circulant(8, (1, 2))  # 4-regular: groups of 4
    cluster = Cluster(adj, rounds=4, params=SecAggParams(verify_views=verify))
    per_node = 8 * 4  # messages of one step: each node, once per group it is in or aggregates
    for r in range(1, 5):
        protos, xs, router, steps = cluster.round(r)
        assert router.deadlines == 0 and not router.rejected
        for p in protos.values():
            assert p.status == "ok" and p.contributors == adj[p.node_id] and p.failures == []
            assert_within_bound(p, xs, cluster.W)
        expected = dict.fromkeys(every_round, per_node)
        if r == 1:  # the first round runs its own share phase
            expected.update(shares=per_node, bundle=per_node)
        assert steps == expected, f"round {r}"
        prepared = cluster.prepared[0]
        assert prepared is not None
        if r < 4:
            assert prepared.agg is not None and sorted(prepared.members) == adj[0]
        else:  # nothing is prepared past the last round
            assert prepared.agg is None and prepared.members == {}


def test_a_restarted_node_is_dropped_from_its_neighbours_groups_and_its_own_group_shares_anew() -> None:
    adj = circulant(8, (1, 2))  # groups of 4, t = 3: a group survives one dropout
    cluster = Cluster(adj, rounds=5, seed=3)
    cluster.round(1)
    protos, xs, router, steps = cluster.round(2, forget=frozenset({5}))  # node 5 restarted
    lost_by = set(adj[5])
    # in its neighbours' groups it has no setup for this round: each answers its shares with
    # "resync" and drops it. Its own group's members mask for a setup it no longer has: it never
    # reads those inputs and asks each to share anew (`RESHARE`), so its own group succeeds at once
    # instead of failing (it used to fail `too_few_members`, and 5 rejoined two rounds later).
    assert router.deadlines == 0
    for i, p in protos.items():
        if i == 5:
            assert p.status == "ok" and p.contributors == adj[5]
            assert {(f.group, f.reason, f.detail) for f in p.failures if f.role == "member"} == \
                {(j, "aborted", "resync") for j in adj[5]}
        elif i in lost_by:
            assert p.status == "ok" and p.contributors == [u for u in adj[i] if u != 5]
            assert p.members[5].outcome == "revealed"  # the fresh membership that shared anew
        else:
            assert p.status == "ok" and p.contributors == adj[i]
        assert_within_bound(p, xs, cluster.W)
    assert steps["shares"] == 2 * len(adj[5])  # node 5 for its memberships, its members for its group
    # next round: the groups that dropped node 5 run their own share phase, and 5 is back in all
    protos, xs, router, steps = cluster.round(3)
    assert router.deadlines == 0 and not router.rejected
    for p in protos.values():
        assert p.status == "ok" and p.contributors == adj[p.node_id]
        assert_within_bound(p, xs, cluster.W)
    assert steps["bundle"] == sum(len(adj[g]) for g in lost_by)
    # and the round after is pipelined everywhere again
    *_, steps = cluster.round(4)
    assert steps["shares"] == steps["bundle"] == 0


def test_a_group_that_fails_before_its_proofs_prepares_nothing() -> None:
    adj = circulant(8, (1, 2))
    cluster = Cluster(adj, rounds=4, seed=7)
    cluster.round(1)
    # round 2: node 0's group {1, 2, 6, 7} loses member 1's masked input (so its view drops 1 and
    # must be confirmed) and the confirmations of 2 and 6: 2 of 4 confirm, T = 3
    xs = {i: cluster.data.standard_normal(L).astype(np.float32) for i in adj}
    protos = {i: SecureGossipRound(i, 2, adj, cluster.W[i], xs[i], SecAggParams(), cluster.secrets[i], cluster.rngs[i],
                                   prepared=cluster.prepared[i]) for i in adj}
    held = {(1, "masked"), (2, "confirm"), (6, "confirm")}
    router = Router(protos, hold=lambda to, m: to == 0 and (m.sender, step_of(m)) in held).run()
    assert protos[0].status == "failed" and protos[0].failure_reason == "too_few_confirmations"
    assert protos[0].prepared_next().agg is None
    for j in adj[0]:  # no member holds a bundle of node 0's next group
        assert 0 not in protos[j].prepared_next().members
    router.release()
    cluster.prepared = {i: p.prepared_next() for i, p in protos.items()}
    protos, xs, router, steps = cluster.round(3)
    assert router.deadlines == 0 and not router.rejected
    assert all(p.status == "ok" for p in protos.values())
    assert steps["bundle"] == len(adj[0])  # node 0's group ran its own share phase, no other group did


def test_a_prepared_setup_for_another_round_is_not_used() -> None:
    adj = circulant(6)
    cluster = Cluster(adj, rounds=5, seed=11)
    cluster.round(1)
    stale = cluster.prepared  # prepared for round 2
    protos, xs, router, steps = cluster.round(3)  # round 2 was skipped (a node caught up)
    assert steps["shares"] == steps["bundle"] == 12
    assert router.deadlines == 0 and all(p.status == "ok" for p in protos.values())
    assert all(s is not None and s.round == 2 for s in stale.values())


def test_without_view_verification_a_restarted_member_rejoins() -> None:
    adj = circulant(8, (1, 2))
    cluster = Cluster(adj, rounds=4, seed=9, params=SecAggParams(verify_views=False))
    cluster.round(1)
    protos, xs, router, steps = cluster.round(2, forget=frozenset({2}))
    for i in adj[2]:
        p = protos[i]
        assert p.status == "ok" and p.contributors == [u for u in adj[i] if u != 2]
        assert_within_bound(p, xs, cluster.W)
    protos, xs, router, steps = cluster.round(3)
    assert router.deadlines == 0 and all(p.status == "ok" and p.contributors == adj[p.node_id] for p in protos.values())


@pytest.mark.parametrize("verify", [True, False])
def test_members_without_their_setup_cost_no_deadline(verify: bool) -> None:
    # node 6 lost the bundles its unmask requests carried (its own group's setup is intact): the groups it
    # is a member of count it as dropped at once and finish without waiting for a deadline
    adj = circulant(8, (1, 2))
    cluster = Cluster(adj, rounds=4, seed=13, params=SecAggParams(verify_views=verify))
    cluster.round(1)
    protos, xs, router, steps = cluster.round(2, forget_members=frozenset({6}))
    assert router.deadlines == 0
    for i, p in protos.items():
        expected = [u for u in adj[i] if u != 6]
        assert p.status == "ok" and p.contributors == (expected if 6 in adj[i] else adj[i])
        assert_within_bound(p, xs, cluster.W)
        if 6 in adj[i]:
            assert p.agg.lost == {6} and 6 in p.agg.revealed_mask and 6 not in p.agg.revealed_self
    assert {(f.group, f.detail) for f in protos[6].failures} == {(j, "resync") for j in adj[6]}
    assert steps["shares"] == len(adj[6])


def test_shares_after_the_group_finished_are_answered_so_a_restarted_node_stops_waiting() -> None:
    # node 5 restarted in round 2 and its shares reach its neighbours only after their groups
    # finished (a new process is slower to start than a round); what they sent its old process is
    # lost. Each answers "late": 5's memberships end at once, and so does its own group's share
    # phase (those neighbours will not share with it this round), with no deadline of its own.
    adj = circulant(8, (1, 2))
    cluster, xs, protos = round_two(adj, seed=5, forget=frozenset({5}))
    router = Router(protos, hold=lambda to, m: to == 5 or (m.sender == 5 and step_of(m) == "shares"))
    router.start()
    router.deliver()
    for _ in range(4):  # the others' deadlines pass (not 5's, still starting): its groups finish without it
        for i in adj:
            if i != 5 and not protos[i].agg.done:
                router.post(i, protos[i].on_deadline())
        router.deliver()
    assert all(protos[j].agg.done and protos[j].contributors == [u for u in adj[j] if u != 5] for j in adj[5])
    assert not any(m.done for m in protos[5].members.values()) and not protos[5].agg.done
    router.held = [(to, m) for to, m in router.held if to != 5]  # addressed to the old process: lost
    router.release()
    assert router.deadlines == 0
    assert {(to, reason) for to, m, reason in router.rejected if m.sender == 5} == {(j, "late") for j in adj[5]}
    assert {j: m.outcome for j, m in protos[5].members.items()} == dict.fromkeys(adj[5], "aborted:late")
    assert protos[5].agg.done and protos[5].failure_reason == "too_few_members"
    assert protos[5].finished()


@pytest.mark.parametrize("adj, dies_before, membership, sums", [
    # groups of 4: the others' shares rebuild 5's self-mask seed; 5 died before asking its members to unmask
    (circulant(8, (1, 2)), "unmask", "aborted:restarted", True),
    # ring, groups of 3: 5's reveal was needed, the group fails safely; its members had revealed to it
    (circulant(6, (1,)), "reveal", "revealed", False),
])
def test_a_neighbour_whose_process_is_replaced_mid_round_costs_no_deadline(adj, dies_before: str, membership: str,
                                                                          sums: bool) -> None:
    # node 5 sent its masked inputs of round 2 and died (SIGKILL) before its next step; its new
    # process agreed fresh sessions with its neighbours, whose transports say so. Told, each stops
    # waiting for what the old process owed: its membership in 5's group ends ("restarted"), and its
    # own group completes with 5's input in the sum where the other members' reveals suffice, and
    # otherwise fails safely, either way at once instead of at the phase's deadline.
    cluster, xs, protos = round_two(adj, seed=7)
    router = Router(protos, crash_before={5: dies_before})
    router.start()
    router.deliver()
    assert {j for j in adj if j != 5 and not protos[j].finished()} == set(adj[5]), \
        "without being told, 5's neighbours wait for its old process"
    tell_restart(router, protos, adj, 5)
    for j in adj[5]:
        p = protos[j]
        assert p.finished() and p.members[5].outcome == membership
        if sums:
            assert p.status == "ok" and 5 in p.contributors and 5 not in p.agg.revealed_mask
            assert_within_bound(p, xs, cluster.W)
        else:
            assert p.status == "failed" and p.failure_reason == "too_few_reveals"
            assert np.array_equal(p.result(), xs[j])  # nothing unmasked: it keeps its own model
    assert all(protos[i].finished() and protos[i].status == "ok" for i in adj if i != 5 and i not in adj[5])


@pytest.mark.parametrize("told", ["restarted", "seen two rounds on"])
def test_a_neighbour_gone_before_it_masked_is_dropped_at_once(told: str) -> None:
    # node 5 died in round 2 before its masked inputs went out (or, after a heal, skipped ahead
    # without masking): its neighbours' groups drop it when told (its mask key c_5 is rebuilt from
    # the shares the others hold, never its self-mask seed)
    adj = circulant(8, (1, 2))
    cluster, xs, protos = round_two(adj, seed=9)
    router = Router(protos, crash_before={5: "masked"})
    router.start()
    router.deliver()
    assert not any(protos[j].agg.done for j in adj[5])
    if told == "restarted":
        tell_restart(router, protos, adj, 5)
    else:
        # seen one round on it may still send round 2's late traffic (a node feeds that to its
        # previous round), so its neighbours go on waiting; seen two rounds on it never will
        for seen in (3, 4):
            assert not any(protos[j].agg.done for j in adj[5])
            for j in adj[5]:
                router.post(j, protos[j].peer_moved_on(5, seen))
            router.deliver()
        assert router.deadlines == 0
    for j in adj[5]:
        p = protos[j]
        assert p.finished() and p.status == "ok" and p.contributors == [u for u in adj[j] if u != 5]
        assert 5 in p.agg.revealed_mask and 5 not in p.agg.revealed_self
        assert_within_bound(p, xs, cluster.W)


def test_on_a_ring_the_round_after_a_restart_succeeds_although_it_was_prepared_with_the_old_process() -> None:
    """Node 5's old process masked in round 2 (its shares for round 3 rode in that input, and its
    neighbours prepared round 3 with them) and died before revealing. Told of the restart, each
    neighbour drops that prepared round (its new process holds none of those secrets), so round
    3 runs its share phase with the new process: the other member, which holds the prepared
    bundle, is asked to share anew. On a ring a group has two members, and dropping the new
    process there instead failed the round below the floor (a second lost round per restart)."""
    adj = circulant(6, (1,))
    cluster, xs, protos = round_two(adj, seed=7)
    router = Router(protos, crash_before={5: "reveal"})
    router.start()
    router.deliver()
    tell_restart(router, protos, adj, 5)
    assert all(protos[j].status == "failed" for j in adj[5])  # the round it died in is lost
    cluster.prepared = {i: p.prepared_next() for i, p in protos.items()}
    protos, xs, router, steps = cluster.round(3, forget=frozenset({5}))
    assert router.deadlines == 0
    for p in protos.values():
        assert p.status == "ok" and p.contributors == adj[p.node_id], (p.node_id, p.failure_reason)
        assert_within_bound(p, xs, cluster.W)
    assert steps["shares"] == 3 * len(adj[5])  # 5 for its groups, 5's members for its group, the others for 5's neighbours'


def test_a_member_shares_anew_once_per_round_when_asked_and_never_again() -> None:
    """The attacker is the aggregator: it asks a member that masked under the prepared setup to
    share anew, twice. The first time the member ends that membership and shares fresh secrets
    (its first masked input keeps its masks: no reveal is ever made for that setup); the second
    time it only ends the membership, so no third masked input of its update can exist."""
    adj = circulant(8, (1, 2))
    cluster, xs, protos = round_two(adj, seed=13)
    member = protos[1]
    assert (0, "masked") in {(to, step_of(m)) for to, m in member.start()}  # prepared: it masks for group 0 at once
    old = member.members[0]
    ask = secagg_message(0, 2, Abort(RESHARE))
    assert [(to, step_of(m)) for to, m in member.on_message(ask)] == [(0, "shares")]
    assert old.done and old.outcome == "aborted:reshare"  # the old setup's membership: no reveal, ever
    fresh = member.members[0]
    assert fresh is not old and not fresh.sent_masked
    assert member.on_message(ask) == []  # asked again: no fresh secrets, no second share phase
    assert fresh.done and fresh.outcome == "aborted:reshare"


def test_on_a_ring_a_process_replaced_between_rounds_costs_no_round() -> None:
    """Node 5's old process finished round 1 and died before its round-2 masked inputs went out;
    its neighbours had started round 2, prepared with its old shares, and masked. Its new process
    joins round 2 with no setup. Each neighbour's own group (5 and one other member, below the
    floor without 5) shares anew in place: the other member is asked to (`RESHARE`), and the
    new process's shares are taken. Each neighbour's membership in 5's group, ended at the
    restart, shares anew with the new process once its shares show it runs this round. So the
    round is not lost at all: it used to fail `privacy_floor` on both neighbours (the second lost
    round of a secure restart, docs/faults.md)."""
    adj = circulant(6, (1,))
    cluster, xs, protos = round_two(adj, seed=11, forget=frozenset({5}))
    router = Router(protos, crash_before={5: "shares"})  # the old process: gone before this round
    router.start()
    router.deliver()
    assert [j for j in adj if protos[j].finished()] == [2], "5's neighbours wait for its old process, their members for them"
    router.dead.discard(5)  # the new process, with fresh sessions
    del router.crash_before[5]
    tell_restart(router, protos, adj, 5)
    router.post(5, protos[5].start())
    router.settle()
    assert router.deadlines == 0
    for p in protos.values():
        assert p.status == "ok" and p.contributors == adj[p.node_id], (p.node_id, p.failure_reason)
        assert_within_bound(p, xs, cluster.W)


@pytest.mark.parametrize("first", ["reshare", "restart"])
def test_asking_anew_and_restarting_give_an_aggregator_one_fresh_share_phase_per_round(first: str) -> None:
    """The attacker is the aggregator again, with both ways to get a member's fresh secrets: asking
    (`RESHARE`) and a new session of its own key (a "restart") followed by its shares for this
    round, which a member answers by sharing anew with the new process. Whichever comes first, the
    member shares anew once; the other gets nothing, so no third masked input of its update exists."""
    adj = circulant(8, (1, 2))
    cluster, xs, protos = round_two(adj, seed=13)
    member = protos[1]
    member.start()  # prepared: it masks for group 0 at once
    ask = secagg_message(0, 2, Abort(RESHARE))
    stranger = Member(protos[0]._spec(2, 1), 0, cluster.W[0][1], xs[0], cluster.secrets[0], seeded_rng(99))
    its_shares = secagg_message(0, 2, stranger.share())  # the "new process" sharing for member 1's group

    def reshare() -> list[tuple[int, str]]:
        return [(to, step_of(m)) for to, m in member.on_message(ask)]

    def restart() -> list[tuple[int, str]]:
        assert member.peer_restarted(0) == []  # 1's own group survives without 0: it is only dropped there
        return [(to, step_of(m)) for to, m in member.on_message(its_shares)]

    ways = {"reshare": reshare, "restart": restart}
    assert (0, "shares") in ways[first]()
    assert (0, "shares") not in ways[{"reshare": "restart", "restart": "reshare"}[first]]()
    assert member.members[0].done  # the fresh membership ended too: nothing more is masked for group 0


def test_a_new_process_seen_one_round_on_is_not_waited_for_by_the_groups_that_shared_anew_for_it() -> None:
    """As in the round-2 restart above, but the new process adopted a later round (another
    neighbour was ahead): it never runs round 2. A process that replaced an old one during this
    round is done with it once seen one round on (an old process seen one round on may still
    send this round's reveals, so it takes two): the groups that shared anew for it stop waiting
    for its shares at once instead of at the share deadline, and fail below the floor."""
    adj = circulant(6, (1,))
    cluster, xs, protos = round_two(adj, seed=11, forget=frozenset({5}))
    router = Router(protos, crash_before={5: "shares"})  # the old process: gone before this round
    router.start()
    router.deliver()
    tell_restart(router, protos, adj, 5)
    assert all(protos[j].agg.stage == 0 for j in adj[5])  # shared anew: waiting for the new process's shares
    for j in adj[5]:
        router.post(j, protos[j].peer_moved_on(5, 3))
    router.settle()
    assert router.deadlines == 0
    for i, p in protos.items():
        if i in adj[5]:
            assert p.status == "failed" and p.failure_reason == "too_few_members"
        elif i != 5:
            assert p.status == "ok", (i, p.failure_reason)


def test_a_restart_told_after_the_neighbours_group_finished_still_voids_the_round_it_prepared() -> None:
    """Node 5's old process revealed for its neighbours' round-2 groups (they finished, with its
    input, and prepared round 3 with the shares that rode in it) and died before asking its own
    members to unmask. The restart reaches each neighbour while only its membership in 5's group
    is pending, which then ends, and so do their rounds. The new process's round-2 `shares` come
    after (it trained first), and the neighbours' finished rounds share anew with it (`_rejoin`):
    round 2 costs nothing. Round 3 succeeds everywhere: what the neighbours prepared for it with
    the old process was dropped although their groups had finished (the new process used to be
    dropped there, `resync`, below the floor: `privacy_floor`), and the late memberships prepare
    nothing (the round's setup for the next was taken; shares riding in them would have prepared
    5's round 3 with secrets its neighbours no longer hold, and failed it the same way; both were
    seen in the process test's runs)."""
    adj = circulant(6, (1,))
    cluster, xs, protos = round_two(adj, seed=11, forget=frozenset({5}))
    old = SecureGossipRound(5, 2, adj, cluster.W[5], xs[5], cluster.params, cluster.secrets[5], cluster.rngs[5],
                            prepared=cluster.prepared[5])
    router = Router({**protos, 5: old}, hold=lambda to, m: m.sender == 5 and step_of(m) == "unmask")
    router.start()
    router.deliver()
    assert [j for j in adj if not protos[j].finished()] == [0, 4, 5] and protos[0].status == protos[4].status == "ok"
    router.protos, router.held, router.hold = protos, [], lambda to, m: False  # the old process is gone
    tell_restart(router, protos, adj, 5)
    assert protos[0].finished() and protos[4].finished()
    prepared = {j: protos[j].prepared_next() for j in adj[5]}  # a node takes it as its round ends
    router.post(5, protos[5].start())  # the new process's first round (it trained first: the others are done)
    router.settle()
    assert router.deadlines == 0
    assert all(p.status == "ok" for p in protos.values())
    cluster.prepared = {i: prepared.get(i) or p.prepared_next() for i, p in protos.items()}
    protos, xs, router, _ = cluster.round(3)
    assert router.deadlines == 0
    for p in protos.values():
        assert p.status == "ok" and p.contributors == adj[p.node_id], (p.node_id, p.failure_reason)
        assert_within_bound(p, xs, cluster.W)


def _cut_ring(cut: tuple[int, int], hold_ends: bool = False):
    """Round-1 protocols of a 6-ring whose edge `cut` is down on both of its ends (each side marked
    the other down), and a router holding every message across it (`hold_ends`: every message to or
    from its ends, so that their rounds are still running): (protocols, inputs, W, router)."""
    adj = circulant(6)
    W, secrets = mh_weights(adj), make_secrets(adj)
    data = np.random.default_rng(3)
    xs = {i: data.standard_normal(L).astype(np.float32) for i in adj}
    a, b = cut
    protos = {i: SecureGossipRound(i, 1, adj, W[i], xs[i], SecAggParams(), secrets[i], seeded_rng(i),
                                   expected=set(adj[i]) - ({b} if i == a else {a} if i == b else set()))
              for i in adj}
    held = (lambda to, m: bool({to, m.sender} & {a, b})) if hold_ends else (lambda to, m: {to, m.sender} == {a, b})
    return protos, xs, W, Router(protos, hold=held)


def test_a_group_below_its_floor_without_a_member_marked_down_takes_it_back_in_the_same_round() -> None:
    """A partition heals mid-round: 0 and 1 marked each other down as the round began (a ring's
    group of two is then below its floor). Their share phases stay open, so once each hears the
    other again (`peer_back`, and what it withheld goes out) every group runs with every member,
    in this round and without a deadline; each invites the other to this round."""
    protos, xs, W, router = _cut_ring((0, 1), hold_ends=True)
    router.start()
    router.deliver()
    assert not protos[0].finished() and not protos[1].finished()  # open, not failed: the other side may come back
    assert protos[0].rejoin_round() == protos[1].rejoin_round() == 1
    for i, j in ((0, 1), (1, 0)):
        router.post(i, protos[i].peer_back(j))
    router.release()
    router.settle()
    assert router.deadlines == 0
    for i, p in protos.items():
        assert p.status == "ok" and sorted(p.contributors) == sorted(circulant(6)[i]), (i, p.failures)
        assert_within_bound(p, xs, W)


def test_a_group_kept_open_for_a_member_marked_down_fails_when_the_rest_of_the_round_is_over() -> None:
    """The cut does not heal: 0's and 1's groups, kept open for each other, fail as below their floor
    once their memberships elsewhere are done, without waiting for a deadline; every other group,
    and the sums they unmask, are as ever."""
    protos, xs, W, router = _cut_ring((0, 1))
    router.run()
    assert router.deadlines == 0
    for i in (0, 1):
        assert protos[i].failure_reason == "too_few_members" and protos[i].contributors == []
        assert np.array_equal(protos[i].result(), xs[i])  # its own model, nothing learned
    for i in (2, 3, 4, 5):
        assert protos[i].status == "ok", (i, protos[i].failures)
        assert_within_bound(protos[i], xs, W)
