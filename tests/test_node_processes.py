"""`p2pfl node` as separate OS processes: a node killed mid-run, and one that restarts and rejoins."""

from __future__ import annotations

import signal
from pathlib import Path

from faultlog import record_fault
from helpers.processes import NODES, finish, make_cluster, node_records, start_node, wait_for_round

def test_sigkilled_node_does_not_stop_its_neighbours(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    rounds = 12
    procs = {k: start_node(cluster, k, tmp_path, rounds, "--down-after", "2") for k in range(NODES)}
    try:
        wait_for_round(tmp_path, 2, 3, procs)
        procs[2].send_signal(signal.SIGKILL)
        procs[2].wait()
        survivors = {k: p for k, p in procs.items() if k != 2}
        finish(survivors, tmp_path)
    finally:
        for p in procs.values():
            p.kill()
    for k in survivors:
        recs = node_records(tmp_path, k)
        assert [r["round"] for r in recs] == list(range(1, rounds + 1))
        assert recs[-1]["test_acc"] > 0.8
    killed_at = max(r["round"] for r in node_records(tmp_path, 2))
    for k in (1, 3):  # ring neighbours of node 2 carried on with one neighbour
        late = [r for r in node_records(tmp_path, k) if r["round"] > killed_at + 1]
        other = {1: 0, 3: 4}[k]  # the neighbour that is still there
        assert late and all(r["arrived"] == 1 and r["heard"] == [other] for r in late), \
            [(r["round"], r["arrived"], r["heard"]) for r in late]
    record_fault("SIGKILL of one `p2pfl node` process mid-run (node 2 of a 6-node ring)", 1,
                 f"held: the 5 survivors ran all {rounds} rounds (accuracy > 0.8); ring neighbours 1 and 3 went on "
                 f"with one neighbour from two rounds after the kill", unit="kill")


def test_restarted_node_resumes_from_its_checkpoint_and_rejoins(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    rounds = 20
    # Neighbours keep waiting for the dead node (high --down-after), so its restart lands mid-run.
    extra = ("--down-after", "100", "--checkpoint-dir", str(tmp_path / "ckpt"))
    procs = {k: start_node(cluster, k, tmp_path, rounds, *extra) for k in range(NODES)}
    try:
        wait_for_round(tmp_path, 2, 4, procs)
        procs[2].send_signal(signal.SIGKILL)
        procs[2].wait()
        before = max(r["round"] for r in node_records(tmp_path, 2))
        procs[2] = start_node(cluster, 2, tmp_path, rounds, *extra)
        finish(procs, tmp_path)
    finally:
        for p in procs.values():
            p.kill()
    rounds_2 = [r["round"] for r in node_records(tmp_path, 2)]
    resumed = rounds_2[before:]
    assert resumed[0] > before, f"restart began at round {resumed[0]}, checkpoint was round {before}"
    assert resumed[-1] == rounds
    assert "resumed from the checkpoint" in (tmp_path / "node-2.log").read_text()
    for k in (1, 3):  # taken back: full neighbourhoods again at the end
        assert any(r["arrived"] == 2 for r in node_records(tmp_path, k)[-3:])
    accs = [node_records(tmp_path, k)[-1]["test_acc"] for k in range(NODES)]
    assert min(accs) > 0.85
    assert max(accs) - min(accs) < 0.05
    record_fault("SIGKILL and restart of one `p2pfl node` process with --checkpoint-dir (6-node ring)", 1,
                 f"held: resumed from its checkpoint past the round it died in and ran to round {rounds}; both "
                 f"neighbours hear it again; final accuracies > 0.85 within 0.05", unit="restart")


def test_a_secure_restart_costs_the_cluster_at_most_the_round_it_killed(tmp_path: Path) -> None:
    """Issue 17: a `--secure` member SIGKILLed mid-run and restarted at once costs at most one round.

    The kill can fail the round its neighbours were in (what the dead process owed them is gone).
    Nothing after it fails: its neighbours stop waiting for the old process the moment the new
    one's sessions are accepted (`peer_restarted`); what they prepared with the old process's
    secrets is dropped, or shared anew in place when a ring's group of two would otherwise fall
    below its floor; their memberships share anew with the new process when its `shares` come,
    even on a round they finished; and such a late membership prepares nothing for the next
    round (docs/secagg.md 3.1). Each of those was a second lost round in some runs here
    (docs/faults.md, *Secure restarts*). The phase deadline is the default 10 s, not the other
    tests' 4 s: with other work beside the suite a round took 4-12 s here, and a deadline that
    load trips is not the restart's cost.
    """
    cluster = make_cluster(tmp_path)
    rounds = 14
    extra = ("--secure", "--down-after", "100", "--checkpoint-dir", str(tmp_path / "ckpt"))
    procs = {k: start_node(cluster, k, tmp_path, rounds, *extra, round_timeout=10.0) for k in range(NODES)}
    try:
        wait_for_round(tmp_path, 2, 4, procs)
        procs[2].send_signal(signal.SIGKILL)
        procs[2].wait()
        procs[2] = start_node(cluster, 2, tmp_path, rounds, *extra, round_timeout=10.0)  # at once, as a supervisor would
        finish(procs, tmp_path)
    finally:
        for p in procs.values():
            p.kill()
    failed = {k: [r["round"] for r in node_records(tmp_path, k) if r["aggregation"] != "ok"] for k in range(NODES)}
    lost = sorted(set().union(*failed.values()))
    assert len(lost) <= 1, failed  # the goal: at most one failed round in the cluster
    assert all(not f or k in (1, 2, 3) for k, f in failed.items()), failed  # only the dead node and its neighbours
    assert all(node_records(tmp_path, k)[-1]["round"] == rounds for k in range(NODES))
    assert node_records(tmp_path, 2)[-1]["aggregation"] == "ok"  # the restarted node is mixed back in
    logs = {k: (tmp_path / f"node-{k}.log").read_text() for k in (1, 3)}
    assert all("node 2 restarted (its earlier process is gone)" in log for log in logs.values())
    record_fault("SIGKILL and immediate restart of a `p2pfl node --secure` process (6-node ring)", 1,
                 f"held: the cluster failed {len(lost)} secure round(s) {lost} (failed rounds per node: {failed}); the "
                 "restarted node's neighbours saw a new session from its new process, and it aggregated again",
                 unit="restart")
