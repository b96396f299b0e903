"""Simulation past one host: `simulate`'s worker groups placed as actors across a Ray cluster.

Owns placing the worker groups of a run on a Ray cluster (`p2pfl simulate --ray ADDRESS`): one
actor per group, spread round-robin over the cluster's alive nodes; the actor's host keeps its
nodes' private keys (generated there, in a temporary directory, never sent anywhere) and binds its
nodes on its own address, so nodes on different hosts talk over ZeroMQ TCP as in a real
deployment. The launcher writes the run directory's cluster file and topology from what the
actors return (id, address, public key) and sends both to every actor. The worker's events come
back through a Ray queue that the launcher drains like `multiprocessing`'s; the nodes' models and
the worker's logs come back into the launcher's run directory when the worker returns.

It does not know protocol details, nor what the events say: it runs the worker function it is
given, `target(node_ids, config_dict, cluster_path, events)`, and `events.put(tuple)` is all it
forwards. Ray is an optional dependency (`pip install 'p2pfl[ray]'`): nothing imports this
module unless --ray is given, and it imports ray only when called.

Every machine of the Ray cluster needs the same p2pfl (and torch) installed, and the launcher
must run on a machine of the cluster (a Ray driver connects through its host's raylet).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import shutil
import socket
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from p2pfl import topology
from p2pfl.config import ConfigError, ExperimentConfig, NodeEntry, write_cluster
from p2pfl.crypto import decode_public, write_keypair

log = logging.getLogger(__name__)

CLUSTER_FILE = "cluster.toml"
TOPOLOGY_FILE = "topology.json"
RETURNED_DIRS = ("models", "logs")  # what a worker writes next to its cluster file and the launcher keeps
PREPARE_TIMEOUT = 300.0  # seconds for every actor to start and make its keys (a cold node starts a worker process)


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("ray", "needs Ray on every machine of the cluster: pip install 'p2pfl[ray]'") from exc
    return ray


def check_head(address: str, timeout: float = 5.0) -> None:
    """ConfigError unless something listens at `address` (HOST:PORT): Ray itself would retry for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError("ray", f"must be the address of a Ray cluster's head, HOST:PORT (e.g. 10.0.0.1:6379), "
                          f"got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError("ray", f"no Ray head answers at {address} ({exc.strerror or exc}); start one there with "
                          "`ray start --head --port=PORT`") from None


def _reserve_port(host: str) -> socket.socket:
    """A socket bound to a port the OS just handed out on `host`, held until the worker binds it.

    Holding it keeps the other actors of the same machine from being handed the same port.
    """
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((host, 0))
    return s


# -- on each Ray node: the actor that hosts one worker group ----------------------------------


class _Forwarder:
    """The worker's `events`: `put(tuple)` never waits on the network; a thread sends batches to the Ray queue."""

    _STOP = object()

    def __init__(self, events: Any) -> None:
        self._events = events
        self._local: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ray-events", daemon=True)
        self._thread.start()

    def put(self, event: tuple) -> None:
        self._local.put(event)

    def close(self) -> None:
        """Send what is left, then stop."""
        self._local.put(self._STOP)
        self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._local.get()]
            while True:
                try:
                    batch.append(self._local.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is self._STOP for item in batch)
            batch = [item for item in batch if item is not self._STOP]
            if batch:
                try:
                    self._events.put_nowait_batch(batch)
                except Exception:  # the launcher's queue is gone: nobody is listening any more
                    log.exception("cannot forward %d event(s) to the launcher", len(batch))


class _GroupHost:
    """One worker group on one Ray node (made a Ray actor by `place`): keys, ports, the worker, its files."""

    def __init__(self) -> None:
        self.reserved: socket.socket | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="p2pfl-ray-"))
        os.chmod(self.dir, 0o700)  # the nodes' private keys live here
        # An actor never run (the launcher failed or stopped first) ends when its handle goes out of
        # scope: Ray lets it exit, and its keys go with it. Only a forced kill leaves the directory.
        atexit.register(shutil.rmtree, self.dir, True)

    def prepare(self, node_ids: list[int], scheme: str) -> tuple[int, list[tuple[int, str, str, str]]]:
        """Make the group's key pairs here and pick its endpoint: a free port on this host's address.

        The group's nodes share the endpoint (`scheme`://ip:port: the worker process's one socket
        address). Returns this actor's pid and, per node, (node id, address, public key base64,
        private key path relative to the cluster file); the private keys stay on this host.
        """
        ray = _ray()
        ip = ray.util.get_node_ip_address()
        host = f"[{ip}]" if ":" in ip else ip
        self.reserved = _reserve_port(ip)
        address = f"{scheme}://{host}:{self.reserved.getsockname()[1]}"
        keys = self.dir / "keys"
        keys.mkdir(mode=0o700, exist_ok=True)
        out = []
        for node_id in node_ids:
            private_path, public_b64 = write_keypair(keys, node_id)
            out.append((node_id, address, public_b64, str(Path(private_path).relative_to(self.dir))))
        return os.getpid(), out

    def run(self, target: Callable[..., None], node_ids: list[int], config: dict, cluster_text: str,
            topology_text: str, events: Any) -> dict[str, bytes]:
        """Write the run's cluster file and topology here, run `target` on them, return what it wrote.

        Returns the files under models/ and logs/ next to the cluster file, by relative path; then
        this host's copy of the run (the private keys with it) is removed.
        """
        try:
            (self.dir / TOPOLOGY_FILE).write_text(topology_text)
            cluster_path = self.dir / CLUSTER_FILE
            cluster_path.write_text(cluster_text)
            if self.reserved is not None:
                self.reserved.close()  # the worker binds it now
            forward = _Forwarder(events)
            try:
                target(node_ids, config, str(cluster_path), forward)
            finally:
                forward.close()
            files = {}
            for name in RETURNED_DIRS:
                for path in sorted((self.dir / name).rglob("*")) if (self.dir / name).is_dir() else []:
                    if path.is_file():
                        files[path.relative_to(self.dir).as_posix()] = path.read_bytes()
            return files
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- on the launcher: handles like multiprocessing's ------------------------------------------


class RayEvents:
    """The launcher's side of the events queue: `get(timeout)` / `empty()` like `multiprocessing.Queue`.

    Takes what has arrived in one call to the queue actor and hands it out one event at a time.
    """

    def __init__(self, events: Any) -> None:
        self.queue = events
        self._buffer: deque = deque()

    def get(self, timeout: float | None = None) -> tuple:
        if not self._buffer:
            self._buffer.append(self.queue.get(timeout=timeout))  # ray.util.queue.Empty is a queue.Empty
            waiting = self.queue.qsize()
            if waiting:
                self._buffer.extend(self.queue.get_nowait_batch(waiting))
        return self._buffer.popleft()

    def empty(self) -> bool:
        return not self._buffer and self.queue.empty()

    def put(self, event: tuple) -> None:
        self.queue.put(event)


class ActorProcess:
    """A worker group running on a Ray actor, with the methods of `multiprocessing.Process` the launcher uses.

    `start()` runs the worker; `is_alive()`, `join(timeout)`, `kill()` and `exitcode` behave as a
    process's do. Once the actor returns, the files it sends back are written under `run_dir`
    (models private, 0600); a worker that raised has exitcode 1 and its error is logged.
    """

    def __init__(self, actor: Any, start: Callable[[], Any], run_dir: Path, name: str, pid: int) -> None:
        self.actor = actor
        self.name = name
        self.pid = pid  # the actor's process, on its own host
        self._start = start
        self._run_dir = run_dir
        self._ref: Any = None
        self._finished = False
        self.exitcode: int | None = None

    def start(self) -> None:
        self._ref = self._start()

    def is_alive(self) -> bool:
        return self._ref is not None and not self._wait(0)

    def join(self, timeout: float | None = None) -> None:
        if self._ref is not None:
            self._wait(timeout)

    def kill(self) -> None:
        """End the actor now (ray.kill: its temporary directory on its host stays behind)."""
        if not self._finished:
            _ray().kill(self.actor)
            self._finished = True
            self.exitcode = -9

    def _wait(self, timeout: float | None) -> bool:
        """Whether the actor has returned (then its files are written, once)."""
        if self._finished:
            return True
        ray = _ray()
        ready, _ = ray.wait([self._ref], timeout=timeout)
        if not ready:
            return False
        self._finished = True
        try:
            _write_back(self._run_dir, ray.get(self._ref))
            self.exitcode = 0
        except Exception as exc:  # the worker raised, its actor or node died, or its files could not be written
            self.exitcode = 1
            log.error("worker group %s failed on Ray: %s", self.name, exc)
        ray.kill(self.actor)  # its work is done: free the process on its node
        return True


def _write_back(run_dir: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.parts[0] not in RETURNED_DIRS:
            raise ValueError(f"an actor returned a file outside {', '.join(RETURNED_DIRS)}: {name!r}")
        path = run_dir.joinpath(*rel.parts)
        private = rel.parts[0] == "models"  # what the nodes' data taught them: 0600, as the worker writes it
        path.parent.mkdir(mode=0o700 if private else 0o777, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def alive_nodes(ray: Any) -> list[dict]:
    """The cluster's alive nodes that offer CPUs (all alive nodes if none does), in a stable order."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    with_cpus = [n for n in alive if n.get("Resources", {}).get("CPU", 0) > 0]
    return sorted(with_cpus or alive, key=lambda n: (n["NodeManagerAddress"], n["NodeID"]))


def place(address: str, config: ExperimentConfig, run_dir: Path, groups: list[list[int]],
          target: Callable[..., None], scheme: str = "hub+tcp") -> tuple[Path, list[ActorProcess], RayEvents]:
    """Connect to the Ray cluster at `address`, start one actor per group, write the run's cluster file.

    Groups go round-robin over the cluster's alive nodes (`alive_nodes`); the nodes of a group
    share one endpoint `scheme`://HOST_IP:PORT on their host. Returns the cluster file in
    `run_dir` (its key_file entries are paths on the nodes' own hosts), one unstarted
    `ActorProcess` per group (`start()` runs `target(group, config_dict, cluster_path, events)`
    on its actor) and the events queue to drain.
    """
    if not _ray_initialized():
        check_head(address)
    ray = _ray()
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    nodes = alive_nodes(ray)
    if not nodes:
        raise RuntimeError(f"the Ray cluster at {address} has no alive node")
    here = ray.get_runtime_context().get_node_id()
    events = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=True)})
    # num_cpus=0: the placement is ours (round-robin), not Ray's CPU accounting; the nodes' threads
    # use the host's cores whatever Ray was told it has.
    host_cls = ray.remote(num_cpus=0, max_restarts=0)(_GroupHost)
    actors = [host_cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[k % len(nodes)]["NodeID"],
                                                                                  soft=False)).remote()
              for k in range(len(groups))]
    prepared = ray.get([a.prepare.remote(g, scheme) for a, g in zip(actors, groups)], timeout=PREPARE_TIMEOUT)

    graph = config.graph()
    run_dir.mkdir(parents=True, exist_ok=True)
    topology.save(graph, run_dir / TOPOLOGY_FILE)
    entries = sorted((NodeEntry(node_id, address_, decode_public(public_b64), Path(key_rel))
                      for _, group in prepared for node_id, address_, public_b64, key_rel in group), key=lambda e: e.id)
    cluster_path = run_dir / CLUSTER_FILE
    write_cluster(cluster_path, entries, TOPOLOGY_FILE)
    cluster_text, topology_text = cluster_path.read_text(), (run_dir / TOPOLOGY_FILE).read_text()
    for group, (pid, placed) in zip(groups, prepared):
        log.info("nodes %s at %s (pid %d)", group, placed[0][1], pid)

    config_dict = config.to_dict()

    def starter(actor: Any, group: list[int]) -> Callable[[], Any]:
        return lambda: actor.run.remote(target, group, config_dict, cluster_text, topology_text, events)

    procs = [ActorProcess(a, starter(a, g), run_dir, name=f"of nodes {g} at {placed[0][1]}", pid=pid)
             for a, g, (pid, placed) in zip(actors, groups, prepared)]
    return cluster_path, procs, RayEvents(events)
