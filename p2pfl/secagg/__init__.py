"""Secure aggregation over neighbourhoods, as sans-I/O round protocols (see docs/secagg.md).

Node i aggregates its group G(i) = N(i): every neighbour u sends i a masked fixed-point
encoding of W_iu * x_u; the masks cancel in the sum, the self masks are removed with secrets
Shamir-shared among the group, and the pairwise masks of members that dropped out are removed
with their (per-round, ephemeral) X25519 mask keys, also Shamir-shared. For each member the
aggregator learns one of the two secrets, never both.

The package, one layer per module (each says what it owns and must not touch):

- `codec`: step names, the frozen dataclass of each step's body, msgpack encoding and checks
- `sealing`: keys from the static pairwise secret, sealed share bundles, MACs, commitments
- `group`: `SecAggParams`, `GroupSpec` (public facts of one group), `Failure`
- `states`: the roles' stage enums and transition tables, and `advance`, the one way to move
- `member`, `aggregator`: the two roles, state machines driven by messages
- `base`, `gossip`, `fedavg`: the topology adapters, which use the roles only through their
  methods: `SecureGossipRound` (aggregator of N(i), member of each N(j), pipelined setup) and
  `SecureFedAvgRound` (the hub aggregates the leaves; `DistributedNoise` for distributed DP)

It uses `crypto` only to seal shares end to end, and never touches sockets, the wire layout or
training.
"""

from p2pfl.secagg.aggregator import Aggregator, GroupFailure
from p2pfl.secagg.codec import (
    AGGREGATOR_STEPS,
    MAC_BYTES,
    MASKED,
    MAX_BODY,
    MAX_ITEMS,
    MEMBER_STEPS,
    STEP_ABORT,
    STEP_BUNDLE,
    STEP_CONFIRM,
    STEP_MASKED,
    STEP_PROOF,
    STEP_REVEAL,
    STEP_SHARES,
    STEP_UNMASK,
)
from p2pfl.secagg.fedavg import HEADROOM_STDS, DistributedNoise, SecureFedAvgRound, fedavg_error_bound
from p2pfl.secagg.gossip import Prepared, SecureGossipRound
from p2pfl.secagg.group import Failure, GroupSpec, SecAggParams
from p2pfl.secagg.member import Member, NoiseFn
from p2pfl.secagg.sealing import RandomFn, SecretFn, members_digest, view_digest
from p2pfl.secagg.states import AggStage, IllegalTransition, MemberStage

__all__ = [
    "AGGREGATOR_STEPS", "HEADROOM_STDS", "MAC_BYTES", "MASKED", "MAX_BODY", "MAX_ITEMS", "MEMBER_STEPS",
    "STEP_ABORT", "STEP_BUNDLE", "STEP_CONFIRM", "STEP_MASKED", "STEP_PROOF", "STEP_REVEAL", "STEP_SHARES",
    "STEP_UNMASK", "AggStage", "Aggregator", "DistributedNoise", "Failure", "GroupFailure", "GroupSpec",
    "IllegalTransition", "Member", "MemberStage", "NoiseFn", "Prepared", "RandomFn", "SecAggParams",
    "SecretFn", "SecureFedAvgRound", "SecureGossipRound", "fedavg_error_bound", "members_digest", "view_digest",
]
