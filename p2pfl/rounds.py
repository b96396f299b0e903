"""Between rounds, sans-I/O: which round a message belongs to, when to skip ahead, who is alive.

Owns two small state machines the node consults with no sockets and no clock:

- `RoundWindow`: where an authenticated (non-heartbeat) message goes while the node runs round
  r: into r's protocol, to the finished previous protocol (its late traffic), into the buffer
  of later rounds (at most `per_peer` per neighbour, only up to the run's last round), or away
  (stale, beyond the budget, buffer full). It hands round r its buffered messages when r starts
  and decides the next round: r + 1, or further when a neighbour is two or more rounds ahead
  and left nothing for r + 1 (a partition healed), dropping what the skipped rounds held. It
  also remembers the latest round each neighbour was seen in (a message, or a probe that says
  only its round): one seen in a later round has sent all it will send for the earlier ones;
  the round a neighbour invited us to join (a probe's `join`), where a skip goes too; and the
  rounds a neighbour said it skipped (a probe's `after`), in which it sends nothing at all.
- `Liveness`: neighbours heard this round, consecutive rounds each stayed silent while it owed
  us a message, and so who is down (no longer waited for) after `down_after` such rounds.

Must not touch: sockets, clocks, logging, protocols and models. It returns what to drop and
why; the node counts, logs and sends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from p2pfl.messages import Message


class Place(Enum):
    """Where `RoundWindow.place` puts a message."""

    CURRENT = "current"  # feed it to this round's protocol
    LATE = "late"  # feed it to the finished previous protocol, which still takes it
    KEPT = "kept"  # buffered for a later round
    DROPPED = "dropped"  # count it under `Verdict.reason`


@dataclass(frozen=True)
class Verdict:
    place: Place
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Dropped:
    """A buffered message the node drops (and counts) because its round was skipped."""

    msg: Message
    reason: str = "skipped_round"

    @property
    def detail(self) -> str:
        return f"{self.msg.kind.name} from {self.msg.sender} for skipped round {self.msg.round}"


_KEEP = Verdict(Place.KEPT)
Owes = Callable[[int, int], bool]  # (neighbour, round) -> it owes us a message in that round


class RoundWindow:
    """The node's messages of later rounds and its decision which round comes next.

    last_round: the run's budget; a message for a round beyond it cannot be honest.
    per_peer: messages of later rounds kept per neighbour while the current round finishes.
    """

    def __init__(self, last_round: int, per_peer: int = 64) -> None:
        self.last_round = last_round
        self.per_peer = per_peer
        self.buffer: list[Message] = []  # authenticated messages of rounds after the current one
        self.latest: dict[int, int] = {}  # per neighbour: the latest round it was seen in (up to last_round)
        # per neighbour: the round it invited us to join (`join`), answering us heard again: a fresh
        # word, unlike a sighting, which may come from a burst of probes queued while the link was down
        self.invited: dict[int, int] = {}
        # per neighbour: its latest skip, (the last round it ran, the round it went on at); it sends
        # nothing, not even late traffic, for the rounds between (a probe's `after`)
        self.skips: dict[int, tuple[int, int]] = {}

    @property
    def ahead(self) -> dict[int, int]:
        """Per neighbour: where to meet it, the later of the round it was seen in and the one it invited us to."""
        return {s: max(self.latest.get(s, 0), self.invited.get(s, 0)) for s in self.latest.keys() | self.invited.keys()}

    def place(self, msg: Message, r: int, late: Callable[[Message], bool] | None = None) -> Verdict:
        """Where `msg` goes while the node runs round `r`; `late` says if the finished round takes it."""
        # The finished round's late traffic first: while a round runs, that is the round before it,
        # and once the last round is over (the node's farewell) it is this very round.
        if late is not None and late(msg):
            return Verdict(Place.LATE)
        if msg.round == r:
            return Verdict(Place.CURRENT)
        what = f"{msg.kind.name} from {msg.sender} for round {msg.round}"
        if r < msg.round <= self.last_round:
            if sum(m.sender == msg.sender for m in self.buffer) >= self.per_peer:
                return Verdict(Place.DROPPED, "buffer_full", what)
            self.buffer.append(msg)
            self.note(msg.sender, msg.round)
            return _KEEP
        reason = "stale_round" if msg.round < r else "wrong_round"
        return Verdict(Place.DROPPED, reason, f"{what} during round {r}")

    def note(self, sender: int, round_: int) -> None:
        """`sender` was seen in `round_` (a buffered message, or a probe carrying its round only)."""
        if round_ <= self.last_round:
            self.latest[sender] = max(self.latest.get(sender, 0), round_)

    def invite(self, sender: int, round_: int) -> None:
        """`sender` will take part with us from `round_` on (it heard us again during the round
        before, whose group was fixed without us): a skip goes there, not to the round it is in."""
        if round_ <= self.last_round:
            self.invited[sender] = max(self.invited.get(sender, 0), round_)

    def skipped(self, sender: int, after: int, round_: int) -> None:
        """`sender` ran round `after` and went on at `round_`: it never runs the rounds between.
        It says so once, as it skips, so this is also an invitation to `round_` (a fresh word, as
        `invite`): a neighbour behind it catches up to it there, its half of a healed partition
        following the node that heard the other half first."""
        if 0 <= after < round_ <= self.last_round and round_ > self.skips.get(sender, (0, 0))[1]:
            self.skips[sender] = (after, round_)
            self.note(sender, round_)
            self.invite(sender, round_)

    def never_runs(self, sender: int, r: int) -> bool:
        """True if `sender` said it skipped round `r` (so nothing of r comes from it, now or late)."""
        after, went_on = self.skips.get(sender, (0, 0))
        return after < r < went_on

    def forget(self, sender: int) -> None:
        """`sender`'s process was replaced: the new one starts from its checkpoint, where it says."""
        self.latest.pop(sender, None)
        self.invited.pop(sender, None)
        self.skips.pop(sender, None)

    def take(self, r: int) -> list[Message]:
        """The buffered messages of round `r` (in arrival order), removed from the buffer."""
        early = [m for m in self.buffer if m.round == r]
        self.buffer = [m for m in self.buffer if m.round != r]
        return early

    def next_round(self, r: int, owes: Owes | None = None) -> tuple[int, list[Dropped]]:
        """(the round after `r`, the buffered messages its skip drops): r + 1 unless a gap opened.

        With gaps to several neighbours the skip goes to the nearest of their rounds: the halves of
        a healed partition need not be in step (a ring's half runs round a at one end and a + 1 at
        the other), and a secure group needs every member in its round, so we meet the nearer
        neighbour there and the further one a round later, instead of leaving the nearer one's
        group a member short.
        """
        gaps = self.gaps_after(r, owes)
        if not gaps:
            return r + 1, []
        target = min(gaps.values())
        return target, self.skip_to(target)

    def gap_after(self, r: int, owes: Owes | None = None) -> bool:
        """True if some neighbour leaves a gap after round `r` (`gaps_after`)."""
        return bool(self.gaps_after(r, owes))

    def gaps_after(self, r: int, owes: Owes | None = None) -> dict[int, int]:
        """{neighbour: the round it is at} for each neighbour two or more rounds ahead of which we
        hold nothing for round r + 1, where it owed us a message (`owes(sender, round)`; None:
        every neighbour, every round). Ahead means seen in that round or invited to it: a buffered
        message, or a probe (which carries nothing for r + 1, so a neighbour known only by its probe
        is always a gap).

        A neighbour that is merely faster (a FedAvg hub racing through rounds in which no leaf
        takes part, say) has left its messages for every round in our buffer: we catch up by
        running those rounds, not by skipping them. One that sends to us only in some rounds
        (push-sum's one peer per round) is no evidence of a gap in the rounds it skips.
        """
        held: dict[int, set[int]] = {}
        for m in self.buffer:
            held.setdefault(m.sender, set()).add(m.round)
        return {sender: seen for sender, seen in self.ahead.items()
                if seen > r + 1 and r + 1 not in held.get(sender, ()) and (owes is None or owes(sender, r + 1))}

    def skip_to(self, r: int) -> list[Dropped]:
        """Drop every buffered message of a round before `r` (the node jumps to `r`)."""
        dropped = [Dropped(m) for m in self.buffer if m.round < r]
        self.buffer = [m for m in self.buffer if m.round >= r]
        return dropped


class Liveness:
    """Who of the neighbours is alive: heard this round, or silent for fewer than `down_after` owed rounds."""

    def __init__(self, neighbours: Iterable[int], down_after: int) -> None:
        self.neighbours = sorted(neighbours)
        self.down_after = down_after
        self.heard: set[int] = set()  # neighbours heard from during the current round
        self.missed = {j: 0 for j in self.neighbours}  # consecutive silent rounds per neighbour

    def hear(self, j: int) -> None:
        """Any authenticated message from `j` proves it alive (and up again for the next round)."""
        self.heard.add(j)
        self.missed[j] = 0

    def new_round(self) -> None:
        self.heard.clear()

    def is_down(self, j: int) -> bool:
        return self.missed[j] >= self.down_after

    def expected(self) -> frozenset[int]:
        """The neighbours a round waits for: those not down."""
        return frozenset(j for j in self.neighbours if not self.is_down(j))

    def end_round(self, senders: frozenset[int]) -> list[int]:
        """Count the round for every neighbour that owed us a message (`senders`) or was heard;
        returns the neighbours that this round marked down."""
        newly_down = []
        for j in self.neighbours:
            if j not in senders and j not in self.heard:
                continue
            was_down = self.is_down(j)
            self.missed[j] = 0 if j in self.heard else self.missed[j] + 1
            if self.is_down(j) and not was_down:
                newly_down.append(j)
        return newly_down

