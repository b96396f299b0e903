"""Synthetic run directories written through `p2pfl.record` (the real schema, the real writer):
for the dashboard's tests, screenshots and its 1,000-node benchmark, where a real run would
only cost time. Figures are seeded and plausible (accuracy rising, distance falling, bytes
growing per link, a few drops on some links), not a model's."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np

from p2pfl import record, topology


def write_run(path: Path, nodes: int = 8, rounds: int = 6, topo: str = "ring", seed: int = 0,
              label: str | None = None, drop_every: int = 0, epsilon: bool = False, secure: bool = False) -> Path:
    """A complete run directory at `path`: config.json, topology.json, metrics.jsonl, summary.json."""
    rng = np.random.default_rng(seed)
    graph = topology.resolve(topo, nodes, seed)
    assert isinstance(graph, nx.Graph)
    path.mkdir(parents=True, exist_ok=True)
    topology.save(graph, path / "topology.json")
    config = {"label": label or topo, "topology": topo, "nodes": nodes, "rounds": rounds, "aggregation": "gossip",
              "secure_agg": secure, "seed": seed, "task": "synthetic", "dp": "local" if epsilon else "off"}
    record.write_config(path, config)
    skill = rng.uniform(0.7, 1.0, nodes)
    links = {v: {j: [0, 0, 0] for j in graph.neighbors(v)} for v in graph.nodes}
    writer = record.MetricsWriter(path / record.METRICS_FILE)
    records = []
    for r in range(1, rounds + 1):
        distance = 2.0 * 0.7 ** r
        for v in range(nodes):
            for j in links[v]:
                size = 40_000 + int(rng.integers(0, 2_000))
                links[v][j][0] += size
                links[j][v][1] += size
                if drop_every and (v + j + r) % drop_every == 0:
                    links[v][j][2] += 1
            acc = float(min(1.0, 0.1 + 0.85 * skill[v] * (1 - 0.75 ** r)))
            rec = record.RoundRecord(
                round=r, node=v, train_loss=2.3 * 0.8 ** r, test_loss=float(2.3 * 0.8 ** r * (1.5 - skill[v] / 2)),
                test_acc=round(acc, 6), bytes_sent=sum(x[0] for x in links[v].values()),
                bytes_received=sum(x[1] for x in links[v].values()), wall_time=0.1 * r, round_time=0.1,
                train_time=0.05, cpu_time=0.05, arrived=len(links[v]),
                dropped={"stale_round": sum(x[2] for x in links[v].values())} if drop_every else {},
                aggregation="too_few_contributors" if secure and (v + r) % 4 == 0 else "ok", epsilon=0.4 * r if epsilon else None, consensus_distance=distance,
                node_distance=float(distance * skill[v] * 2 / 1.7),
                links={str(j): list(x) for j, x in sorted(links[v].items())})
            writer.append(rec)
            records.append(rec)
    writer.close()
    summary = record.RunSummary(
        label=config["label"], topology=topo, aggregation="gossip", secure_agg=secure, nodes=nodes, rounds=rounds,
        partition="iid", seed=seed, spectral_gap=0.1, node_ids=list(range(nodes)),
        final_acc_mean=None, final_acc_std=None, dp="local" if epsilon else "off", dp_delta=1e-5 if epsilon else None,
        epsilon_max=None, compression="none", participation=1.0, fedavg_sample=0, fedprox_mu=0.0, wall_time=0.1 * rounds,
        processes=1, peak_rss_mb=100.0, versions={"python": "3"})
    acc_mean, acc_std, eps = record.final_figures(records)
    summary.final_acc_mean, summary.final_acc_std, summary.epsilon_max = acc_mean, acc_std, eps
    record.write_summary(path, summary)
    return path
