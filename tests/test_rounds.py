"""The node's cross-round logic without sockets: the later-round buffer, skipping ahead, liveness."""

from __future__ import annotations

from p2pfl.messages import Kind, Message
import pytest

from p2pfl.rounds import Liveness, Place, RoundWindow


def _m(sender: int, round_: int, kind: Kind = Kind.MODEL) -> Message:
    return Message(kind, sender, round_)


def test_current_later_stale_and_beyond_budget_messages() -> None:
    w = RoundWindow(last_round=10)
    assert w.place(_m(1, 4), 4).place is Place.CURRENT
    assert w.place(_m(1, 5), 4).place is Place.KEPT
    stale = w.place(_m(1, 3), 4)
    assert (stale.place, stale.reason, stale.detail) == (Place.DROPPED, "stale_round", "MODEL from 1 for round 3 during round 4")
    assert w.place(_m(1, 11), 4).reason == "wrong_round"  # beyond the budget: cannot be honest, no jump
    assert w.latest == {1: 5} and [m.round for m in w.buffer] == [5]


def test_late_traffic_goes_to_the_finished_round_before_it_counts_as_stale() -> None:
    w = RoundWindow(last_round=10)
    late = lambda m: m.kind == Kind.SECAGG and m.round == 3  # noqa: E731
    assert w.place(_m(2, 3, Kind.SECAGG), 4, late).place is Place.LATE
    assert w.place(_m(2, 3, Kind.MODEL), 4, late).reason == "stale_round"


def test_buffer_keeps_at_most_per_peer_messages_of_each_neighbour() -> None:
    w = RoundWindow(last_round=100, per_peer=3)
    assert [w.place(_m(1, r), 1).place for r in (2, 3, 4)] == [Place.KEPT] * 3
    full = w.place(_m(1, 5), 1)
    assert (full.place, full.reason, full.detail) == (Place.DROPPED, "buffer_full", "MODEL from 1 for round 5")
    assert w.place(_m(2, 5), 1).place is Place.KEPT  # another neighbour has its own allowance


def test_take_hands_a_round_its_early_messages_once_in_arrival_order() -> None:
    w = RoundWindow(last_round=10)
    for sender, r in ((1, 3), (2, 4), (3, 3)):
        w.place(_m(sender, r), 2)
    assert [m.sender for m in w.take(3)] == [1, 3]
    assert w.take(3) == [] and [m.round for m in w.buffer] == [4]


def test_a_merely_faster_neighbour_is_followed_round_by_round() -> None:
    w = RoundWindow(last_round=20)
    for r in (6, 7, 8):  # a hub racing ahead left a message for every round
        w.place(_m(0, r), 5)
    assert w.next_round(5) == (6, [])


def test_a_neighbour_two_rounds_ahead_with_nothing_for_the_next_round_makes_us_skip() -> None:
    w = RoundWindow(last_round=20)
    w.place(_m(1, 7), 4)  # a partition healed: 1 is at round 7, nothing of it for round 5
    w.place(_m(2, 5), 4)
    w.place(_m(2, 6), 4)
    nxt, dropped = w.next_round(4)
    assert nxt == 7
    assert [(d.msg.sender, d.reason, d.detail) for d in dropped] == [
        (2, "skipped_round", "MODEL from 2 for skipped round 5"), (2, "skipped_round", "MODEL from 2 for skipped round 6")]
    assert [m.round for m in w.buffer] == [7]


def test_with_gaps_to_several_neighbours_the_skip_goes_to_the_nearest() -> None:
    """A healed ring's other half is not in step: one neighbour went on at round 7, the other at 9.
    We meet the first at 7 (a secure group of its needs us there) and the second at 9 after."""
    w = RoundWindow(last_round=20)
    w.place(_m(1, 9), 4)
    w.place(_m(2, 7), 4)
    nxt, dropped = w.next_round(4)
    assert (nxt, dropped) == (7, []) and w.gaps_after(4) == {1: 9, 2: 7}
    assert sorted(m.round for m in w.buffer) == [7, 9]  # 1's message of round 9 waits for us there
    assert [m.sender for m in w.take(7)] == [2] and w.next_round(7) == (9, [])


def test_a_skip_said_marks_the_rounds_between_as_never_run() -> None:
    """A probe's `after`: the neighbour ran round 5 and went on at 9; rounds 6-8 get nothing from it."""
    w = RoundWindow(last_round=20)
    w.skipped(1, 5, 9)
    assert [r for r in range(4, 11) if w.never_runs(1, r)] == [6, 7, 8]
    assert w.latest == {1: 9} and w.invited == {1: 9}  # it is at round 9, and said so as it went: meet it there
    w.skipped(1, 2, 4)  # an older skip (its probe overtaken by the newer one) changes nothing
    assert w.skips == {1: (5, 9)}
    for bad in ((9, 9), (10, 9), (-1, 3), (5, 21)):  # no rounds between, backwards, or beyond the run
        w.skipped(2, *bad)
    assert 2 not in w.skips
    w.forget(1)  # a new process says again what it skips
    assert not w.never_runs(1, 7)


def test_a_neighbour_that_owed_us_nothing_for_the_next_round_is_no_gap() -> None:
    """Push-sum: neighbour 1 pushes to us every third round only; being ahead is no partition."""
    w = RoundWindow(last_round=20)
    w.place(_m(1, 7), 4)
    w.place(_m(2, 5), 4)
    owes = lambda j, r: j != 1 or r % 3 == 1  # noqa: E731  (1 owes us rounds 4, 7, 10, ...)
    assert w.next_round(4, owes) == (5, [])
    assert w.next_round(4)[0] == 7  # without the strategy's word it would have skipped


def test_one_round_ahead_is_not_a_gap() -> None:
    w = RoundWindow(last_round=20)
    w.place(_m(1, 5), 4)
    assert w.next_round(4) == (5, [])


def test_a_probe_alone_says_where_a_neighbour_is_and_makes_us_skip_to_it() -> None:
    """After a heal the first word from the other half may be a probe (its round, no model)."""
    w = RoundWindow(last_round=20)
    w.note(1, 9)
    assert w.buffer == [] and w.next_round(4) == (9, [])
    w.note(1, 30)  # beyond the budget: not believed
    assert w.latest == {1: 9}


def test_an_invitation_moves_the_skip_but_not_where_the_neighbour_was_seen() -> None:
    """A neighbour that heard us again in its round 9 takes part with us from round 10 (its group
    of 9 was fixed without us): we skip to 10, while it was seen in 9 only (what it may still send
    for our earlier rounds is judged by 9)."""
    w = RoundWindow(last_round=20)
    w.note(1, 9)
    assert w.invited == {}  # a sighting is no invitation: the node moves mid-round only on one (`Node._jump_target`)
    w.invite(1, 10)
    assert w.latest == {1: 9} and w.invited == {1: 10} and w.next_round(4) == (10, [])
    w.note(1, 12)  # a burst of probes queued while the link was down, oldest first: not an invitation
    assert w.invited == {1: 10} and w.next_round(4) == (12, [])  # the end-of-round skip takes the furthest
    w.forget(1)  # its process restarted: the new one says again where it is
    assert w.latest == {} and w.invited == {} and w.next_round(4) == (5, [])


def test_catch_up_drops_what_the_skipped_rounds_held() -> None:
    w = RoundWindow(last_round=20)
    for r in (2, 3, 9):
        w.place(_m(1, r), 1)
    assert [d.msg.round for d in w.skip_to(9)] == [2, 3]
    assert [m.round for m in w.buffer] == [9]


def test_a_neighbour_silent_while_it_owed_us_is_marked_down_and_up_again_when_heard() -> None:
    live = Liveness([1, 2], down_after=2)
    owed = frozenset({1, 2})
    newly = []
    for _ in range(2):
        live.new_round()
        live.hear(2)
        newly += live.end_round(owed)
    assert newly == [1] and live.expected() == {2}
    live.new_round()
    assert live.end_round(owed) == []  # 1 was down already; 2 has missed one round only
    assert live.missed == {1: 3, 2: 1}
    live.new_round()
    live.hear(1)  # any authenticated message marks it up for the next round
    assert live.expected() == {1, 2}
    assert live.end_round(owed) == [2]
    assert live.expected() == {1}


def test_silence_counts_only_in_rounds_where_the_neighbour_owed_a_message() -> None:
    live = Liveness([1, 2], down_after=1)
    live.new_round()
    assert live.end_round(frozenset({2})) == [2]  # 1 owed nothing (a leaf that sat out): no miss
    assert live.missed == {1: 0, 2: 1} and live.expected() == {1}
    live.new_round()
    live.hear(1)
    assert live.end_round(frozenset()) == []  # heard without owing: still alive, count reset
    assert live.missed[1] == 0

