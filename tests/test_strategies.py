"""The strategy seam: a registry of small objects, asked by config, privacy and the node instead of names."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from p2pfl import privacy, strategies
from p2pfl.config import ConfigError, ExperimentConfig
from p2pfl.protocols import FedAvgRound, GossipRound, RoundProtocol
from p2pfl.strategies import RoundContext, get, names
from p2pfl.strategies.secure import SecureFedAvg, SecureGossip

PACKAGE = Path(strategies.__file__).parent
ROOT = Path(strategies.__file__).parents[2]


def test_registry_names_every_strategy_module_builtin_first() -> None:
    assert names()[:2] == ("gossip", "fedavg")
    assert set(names()) == {"gossip", "fedavg", "fednova", "pushsum"}
    assert all(get(n).name == n for n in names())
    with pytest.raises(ValueError, match="unknown aggregation 'allreduce': use one of gossip, fedavg"):
        get("allreduce")


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        strategies.register("gossip")(type("Other", (type(get("gossip")),), {}))


@pytest.mark.parametrize("name", ["fednova", "pushsum"])
def test_a_new_strategy_lives_in_its_own_module_only(name: str) -> None:
    """Adding a strategy touched its module (and tests): no other module of the package names it."""
    mentions = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "p2pfl").rglob("*.py")
                      if re.search(rf"\b{name}\b", p.read_text(), re.IGNORECASE))
    assert mentions == [f"p2pfl/strategies/{name}.py"]


def _protocol_calls(source: str) -> set[str]:
    """Attributes the node reads on objects named `protocol` or `late` (its protocols)."""
    tree = ast.parse(source)
    return {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in ("protocol", "late")}


def test_the_node_uses_only_what_the_round_protocol_interface_declares() -> None:
    source = (ROOT / "p2pfl" / "node.py").read_text()
    used = _protocol_calls(source)
    declared = {n for n, _ in inspect.getmembers(RoundProtocol)} | set(RoundProtocol.__annotations__)
    assert used, "the node drives protocols through these names"
    assert used <= declared, f"node.py uses {sorted(used - declared)} beyond RoundProtocol"
    assert "isinstance" not in source and "getattr(" not in source
    assert not re.search(r"Secure(Gossip|FedAvg)Round|aggregation ==", source)


def test_interface_defaults_let_a_plain_protocol_be_driven_like_a_secure_one() -> None:
    p = GossipRound(0, 4, {0: 0.5, 1: 0.5}, np.zeros(3, np.float32))
    assert (p.round, p.failure_reason, p.release(), p.prepared_next()) == (4, None, None, None)
    assert not p.takes_late(p.start()[0][1])
    assert issubclass(SecureGossip, RoundProtocol) and issubclass(SecureFedAvg, RoundProtocol)


def _ctx(**kw) -> RoundContext:
    adjacency = {0: (1, 2), 1: (0,), 2: (0,)}
    base = dict(node_id=0, round=1, last_round=3, adjacency=adjacency, weights={0: 1 / 3, 1: 1 / 3, 2: 1 / 3}, hub=0,
                own=np.zeros(4, np.float32), start=np.zeros(4, np.float32), fallback=None, samples=5, local_steps=2,
                expected=frozenset({1, 2}), active=frozenset({0, 2}))
    return RoundContext(**{**base, **kw})


def test_strategies_build_the_protocols_the_node_used_to_choose() -> None:
    assert type(get("gossip").protocol(_ctx())) is GossipRound
    assert type(get("fedavg").protocol(_ctx())) is FedAvgRound
    assert get("gossip").senders(_ctx()) == {1, 2}
    assert get("fedavg").senders(_ctx()) == {2}  # the hub: leaf 1 sits this round out
    assert get("fedavg").senders(_ctx(node_id=1)) == {0}


def test_config_takes_the_aggregation_choices_and_limits_from_the_registry() -> None:
    with pytest.raises(ConfigError, match="aggregation: must be one of gossip, fedavg, fednova, pushsum"):
        ExperimentConfig(aggregation="allreduce").validate()
    with pytest.raises(ConfigError, match="fednova needs a star topology"):
        ExperimentConfig(aggregation="fednova", topology="ring").validate().graph()
    assert ExperimentConfig(aggregation="fednova", topology="star", fedavg_sample=3).validate().display_label() == "star-fednova+K3"
    assert ExperimentConfig(aggregation="pushsum", topology="torus").validate().display_label() == "torus-pushsum"
    assert ExperimentConfig(topology="torus").validate().display_label() == "torus"
    with pytest.raises(ConfigError, match="fedavg_sample: sampling leaves needs a star hub"):
        ExperimentConfig(aggregation="pushsum", topology="star", fedavg_sample=2).validate()
    for kw in ({"dp": "local"}, {"compression": "q8"}, {"participation": 0.5}):
        ExperimentConfig(aggregation="fednova", topology="star", **kw).validate()
        ExperimentConfig(aggregation="pushsum", **kw).validate()


@pytest.mark.parametrize("aggregation, dp", [("fednova", "central"), ("pushsum", "central")])
def test_config_refuses_dp_placements_a_strategy_does_not_implement(aggregation: str, dp: str) -> None:
    with pytest.raises(ConfigError, match=f"dp: .*aggregation = {aggregation}.*dp = local"):
        ExperimentConfig(aggregation=aggregation, topology="star", dp=dp).validate()


def test_privacy_takes_what_the_strategy_declares_a_trusted_aggregator_and_overlapping_sums() -> None:
    def trusted(name: str) -> bool:
        return strategies.get(name).needs_hub

    def overlapping(name: str) -> bool:
        return strategies.get(name).overlapping_groups

    assert privacy.validate_placement("central", trusted("fednova"), False) is privacy.Placement.CENTRAL  # a hub
    with pytest.raises(ValueError, match="trusted aggregator"):
        privacy.validate_placement("central", trusted("pushsum"), False)
    assert privacy.releases_per_round("distributed", overlapping("gossip"), 3) == 4
    assert privacy.releases_per_round("distributed", overlapping("fednova"), 3) == 1
