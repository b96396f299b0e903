"""`p2pfl simulate --ray`: the worker processes as Ray actors across a real two-machine Ray cluster.

The cluster is a Ray head on this host (the root network namespace) and a second Ray node inside a
network namespace with an address of its own, joined to the host by a veth pair: two machines as
far as Ray and the nodes' sockets can tell. The launcher runs `p2pfl simulate --ray HEAD` on the
host; `p2pfl.raycluster` puts one worker group on each Ray node, each generating its nodes' keys and
binding them on its own host's address. The test checks what a user relies on: the run directory
is complete (summary, every node's rounds, the models and logs that came back from both machines),
both Ray nodes hosted nodes, and traffic crossed the namespace boundary: the transport counters of
the namespace's nodes (metrics.jsonl), whose neighbours all live on the host, count bytes received,
and the namespace's own interface saw at least as many.

Needs root and iproute2 (`ip`), like tests/test_netns.py, and Ray (`pip install -e '.[dev]'`
brings it): without them it fails, saying what is missing. The Ray processes and the namespace
(with its veth pair) are removed at the end, whatever happened.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Token authentication with a token of this run's own, so the cluster neither depends on nor touches
# ~/.ray/auth_token (Ray 2.60 turns token mode on by itself when that file exists)
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
# Ray kept light: one CPU each, no dashboard, the smallest object store Ray accepts with room to spare
RAY_LIGHT = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
HEAD_ONLY = ["--include-dashboard=false"]
START_LIMIT = 120.0  # seconds for both Ray nodes to be up and registered
RUN_LIMIT = 240  # seconds for the simulation


def _load_netns():
    spec = importlib.util.spec_from_file_location("p2pfl_netns_harness", ROOT / "scripts" / "netns.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


netns = _load_netns()


def _preflight() -> str | None:
    """Why this test cannot run here (it then fails with this), or None."""
    if os.geteuid() != 0:
        return f"the Ray cluster test builds a network namespace: it needs root (running as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "`ip` is not installed (apt-get install -y iproute2; scripts/test.sh does it as root)"
    if importlib.util.find_spec("ray") is None or not (BIN / "ray").exists():
        return f"Ray is not installed in {sys.prefix}: pip install -e '.[dev]' (or '.[ray]')"
    return None


def _free_subnet() -> int:
    """A third octet k with 10.234.k.0/30 unused on this host."""
    used = netns.sh("ip", "-o", "addr").stdout + netns.sh("ip", "route").stdout
    for _ in range(100):
        k = secrets.randbelow(254) + 1
        if f"10.234.{k}." not in used:
            return k
    raise RuntimeError("no free 10.234.k.0/30 subnet")


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RayCluster:
    address: str  # the head's GCS, HOST:PORT
    host_ip: str  # the head's address, in the root namespace
    ns_ip: str  # the second Ray node's address, inside the namespace
    ns: str
    logs: list[Path]

    def tail(self) -> str:
        return "\n".join(f"-- {p.name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                         for p in self.logs if p.exists())


def _alive_nodes(address: str) -> int:
    """How many Ray nodes the head has registered as alive (a short-lived driver asks it)."""
    code = (f"import ray; ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **RAY_ENV})
    return int(proc.stdout.split()[-1]) if proc.returncode == 0 and proc.stdout.split() else 0


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    problem = _preflight()
    if problem:
        pytest.fail(problem)
    netns.reap_stale()  # namespaces of a run killed without cleaning up
    tag = f"{netns.PREFIX}{os.getpid()}x{secrets.token_hex(2)}"  # reaped by netns.reap_stale once we are gone
    ns, veth = f"{tag}-ray", f"p2r{secrets.token_hex(4)}"[:15]
    k = _free_subnet()
    host_ip, ns_ip = f"10.234.{k}.1", f"10.234.{k}.2"
    # Ray's sockets live under --temp-dir: a short path keeps them within the 107 bytes of a Unix socket path
    tmp = Path(tempfile.mkdtemp(prefix="p2r"))
    procs: list[subprocess.Popen] = []
    env = {**os.environ, **RAY_ENV}
    try:
        netns.sh("ip", "netns", "add", ns)
        netns.sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        netns.sh("ip", "addr", "add", f"{host_ip}/30", "dev", veth)
        netns.sh("ip", "link", "set", veth, "up")
        netns.sh("ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", "eth0")
        netns.sh("ip", "-n", ns, "link", "set", "eth0", "up")
        netns.sh("ip", "-n", ns, "link", "set", "lo", "up")
        port = _free_port(host_ip)
        address = f"{host_ip}:{port}"
        logs = [tmp / "head.log", tmp / "node.log"]
        with open(logs[0], "w") as out:
            procs.append(subprocess.Popen(
                [str(BIN / "ray"), "start", "--head", "--block", f"--node-ip-address={host_ip}", f"--port={port}",
                 f"--temp-dir={tmp / 'h'}", *RAY_LIGHT, *HEAD_ONLY], stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True))
        cluster = RayCluster(address, host_ip, ns_ip, ns, logs)
        deadline = time.monotonic() + START_LIMIT
        while "Ray runtime started" not in logs[0].read_text(errors="replace"):
            assert procs[0].poll() is None and time.monotonic() < deadline, "the Ray head did not start:\n" + cluster.tail()
            time.sleep(0.5)
        with open(logs[1], "w") as out:
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, str(BIN / "ray"), "start", "--block", f"--address={address}",
                 f"--node-ip-address={ns_ip}", f"--temp-dir={tmp / 'n'}", *RAY_LIGHT], stdout=out,
                stderr=subprocess.STDOUT, env=env, start_new_session=True))
        while _alive_nodes(address) < 2:
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, (
                "the Ray node in the namespace did not join the head:\n" + cluster.tail())
            time.sleep(1)
        yield cluster
    finally:
        for p in reversed(procs):
            netns._end(p)  # the whole process group: `ray start`, its raylet, GCS, agents and workers
        netns._kill_pids_in(ns)  # anything still inside the namespace (started by its Ray node)
        netns.sh("ip", "netns", "del", ns, check=False)  # takes the veth pair with it
        netns.sh("ip", "link", "del", veth, check=False)  # (gone already, unless the namespace never got it)
        shutil.rmtree(tmp, ignore_errors=True)


def _rx_bytes(ns: str) -> int:
    stats = json.loads(netns.sh("ip", "-n", ns, "-s", "-j", "link", "show", "eth0").stdout)
    return int(stats[0]["stats64"]["rx"]["bytes"])


def test_simulate_places_worker_groups_on_both_machines_of_a_ray_cluster(ray_cluster: RayCluster, tmp_path: Path) -> None:
    from p2pfl import topology
    from p2pfl.config import Cluster
    from p2pfl.record import check_complete, read_run

    run_dir = tmp_path / "run"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "p2pfl.cli", "simulate", "--ray", ray_cluster.address, "-n", "4",
                           "-t", "ring", "-r", "2", "--processes", "2", "--out", str(run_dir)],
                          capture_output=True, text=True, timeout=RUN_LIMIT, env={**os.environ, **RAY_ENV}, cwd=tmp_path)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:] + "\n" + ray_cluster.tail()

    # the run directory is complete: summary, every node's every round, models and logs from both machines
    run = read_run(run_dir)
    check_complete(run)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary.get("status", "complete") == "complete" and not summary.get("failures"), summary
    assert summary["nodes"] == 4 and summary["rounds"] == 2 and summary["processes"] == 2, summary
    assert sorted(p.name for p in (run_dir / "models").iterdir()) == [f"node-{i}.npy" for i in range(4)]
    assert len(list((run_dir / "logs").glob("worker-*.log"))) == 2  # one per worker group, from each machine

    # both Ray nodes hosted nodes: each node is bound on the address of the machine its actor ran on
    cluster = Cluster.load(run_dir / "cluster.toml")
    host_of = {i: e.address.split("://", 1)[1].rsplit(":", 1)[0] for i, e in cluster.nodes.items()}
    assert set(host_of.values()) == {ray_cluster.host_ip, ray_cluster.ns_ip}, host_of
    inside = sorted(i for i, h in host_of.items() if h == ray_cluster.ns_ip)

    # edges of the topology cross the namespace boundary, and the transport counters saw traffic over them
    graph = topology.load(run_dir / "topology.json")
    crossing = [(a, b) for a, b in graph.edges if (host_of[a] == ray_cluster.ns_ip) != (host_of[b] == ray_cluster.ns_ip)]
    assert crossing, f"no edge crosses the namespace boundary: {sorted(graph.edges)}, hosts {host_of}"
    last = {i: max((r for r in run.records if r.node == i), key=lambda r: r.round) for i in range(4)}
    only_outside = [i for i in inside if all(host_of[j] != ray_cluster.ns_ip for j in graph.neighbors(i))]
    assert only_outside, f"every node in the namespace has a neighbour there too: {host_of}"
    for i in only_outside:  # everything it received crossed the boundary
        assert last[i].bytes_received > 0 and last[i].bytes_sent > 0, last[i]
        assert all(r.arrived == graph.degree[i] for r in run.records if r.node == i), (
            f"node {i} (in the namespace) missed a neighbour on the host: "
            f"{[(r.round, r.arrived) for r in run.records if r.node == i]}")
    received = sum(last[i].bytes_received for i in only_outside)
    kernel = _rx_bytes(ray_cluster.ns)  # the namespace's side of the veth: Ray's traffic and the nodes'
    assert kernel >= received, f"eth0 in the namespace received {kernel} bytes, its nodes counted {received}"
    print(f"\nsimulate --ray: {wall:.1f}s; nodes {inside} in the namespace; crossing edges {crossing}; "
          f"{received} bytes received across by {only_outside}; namespace eth0 rx {kernel} bytes")


def test_nothing_imports_ray_without_the_ray_option() -> None:
    """Ray is an optional extra: the package and a plain run's modules never import it."""
    code = ("import sys, p2pfl.cli, p2pfl.simulate, p2pfl.launch, p2pfl.host, p2pfl.config; "
            "print('ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_files_an_actor_sends_back_stay_in_the_run_directory(tmp_path: Path) -> None:
    from p2pfl.raycluster import _write_back

    _write_back(tmp_path, {"models/node-0.npy": b"m", "logs/worker-0.log": b"l"})
    assert (tmp_path / "models" / "node-0.npy").read_bytes() == b"m"
    assert (tmp_path / "models" / "node-0.npy").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "logs" / "worker-0.log").read_bytes() == b"l"
    for bad in ("../x", "/etc/x", "keys/node0.key", "models/../../x"):
        with pytest.raises(ValueError):
            _write_back(tmp_path / "run", {bad: b"x"})


def test_a_ray_address_nobody_answers_at_is_a_config_error_at_once() -> None:
    """Ray retries an unreachable head for minutes; the launcher says so in a moment, naming the setting."""
    from p2pfl.config import ConfigError
    from p2pfl.raycluster import check_head

    for bad in ("nonsense", ":6379", "host:port"):
        with pytest.raises(ConfigError, match="ray: must be the address of a Ray cluster's head"):
            check_head(bad)
    port = _free_port("127.0.0.1")  # free: nothing listens there
    started = time.monotonic()
    with pytest.raises(ConfigError, match=f"ray: no Ray head answers at 127.0.0.1:{port}"):
        check_head(f"127.0.0.1:{port}")
    assert time.monotonic() - started < 6
