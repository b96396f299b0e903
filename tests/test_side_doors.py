"""The side doors of issue 17, tried against real `p2pfl node` processes as an attacker would.

- Replay across sessions: every byte that two nodes sent a third during a run is recorded at
  the TCP level (a recording proxy sits where the third node's address is in their cluster
  file), then written again, byte for byte, to a freshly started third node with the same keys.
  Nothing of it may be accepted; every message of it must be counted.
- A duplicated identity: a second process started with node 1's key file (on another port, as
  its own cluster file says) while the real node 1 runs. It must be refused by every neighbour
  and exit with a clear error, the real node must be told, and the real cluster's results must
  be bit-identical to a run without it.

Both runs are paced by the test, not by the clock: a ring node that has not met all of its
neighbours waits in its start-up barrier, so a cluster with one node not yet started holds still
(sessions agreed, nothing trained) for as long as the test needs.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack

from faultlog import record_fault
from helpers.processes import finish, make_cluster, node_records, start_node

from p2pfl.messages import Kind

ROUNDS = 4


# -- a recording TCP proxy -------------------------------------------------------------------


class RecordingProxy:
    """Listens on a port and pipes every connection to `target`, keeping what clients sent."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.streams: list[bytearray] = []  # client -> server bytes, one per connection
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:  # the node is not up yet: the client's libzmq reconnects
                client.close()
                continue
            recorded = bytearray()
            self.streams.append(recorded)
            threading.Thread(target=self._pipe, args=(client, server, recorded), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, None), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        try:
            while data := src.recv(65536):
                if record is not None:
                    record += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


def zmtp_messages(stream: bytes) -> list[list[bytes]]:
    """The multipart messages in a recorded ZMTP 3 client stream (greeting and commands skipped)."""
    messages, current, at = [], [], 64  # the greeting is 64 bytes
    while at < len(stream):
        flags = stream[at]
        if flags & 0x02:  # LONG
            if at + 9 > len(stream):
                break
            size, at = struct.unpack(">Q", stream[at + 1:at + 9])[0], at + 9
        else:
            if at + 2 > len(stream):
                break
            size, at = stream[at + 1], at + 2
        if at + size > len(stream):
            break  # the connection ended mid-frame
        body, at = stream[at:at + size], at + size
        if flags & 0x04:  # a command (READY, PING, ...), not a message frame
            continue
        current.append(body)
        if not flags & 0x01:  # no MORE: the message is complete
            messages.append(current)
            current = []
    return messages


def replay(stream: bytes, address: tuple[str, int]) -> socket.socket:
    """Write a recorded client stream to `address` again, byte for byte, on a new TCP connection.

    libzmq reads a greeting in steps and drops bytes that arrive before it asked for them, so
    the replay is written in the steps the original client's libzmq took, each after the
    server's answer to the one before (its whole greeting after our signature and version, its
    READY after our greeting): an attacker needs no key for that. The connection stays open:
    closing it could race libzmq's reading of the last messages.
    """
    sock = socket.create_connection(address)
    sock.settimeout(30)
    received = b""
    for (start, end), answer in (((0, 11), 64), ((11, 64), 65), ((64, len(stream)), 0)):
        sock.sendall(stream[start:end])
        while len(received) < answer:
            chunk = sock.recv(4096)
            assert chunk, "the node closed the connection during the greeting"
            received += chunk
    return sock


def _kind_and_session(frames: list[bytes]) -> tuple[int, bytes]:
    header = msgpack.unpackb(frames[0])
    return header[1], header[10]


def _address(cluster: Path, node: int) -> str:
    text = cluster.read_text()
    return re.search(rf'id = {node}\naddress = "([^"]+)"', text).group(1)


def _with_address(cluster: Path, node: int, address: str, name: str) -> Path:
    """A copy of the cluster file (same folder: key paths stay valid) with `node` at `address`."""
    text = cluster.read_text()
    text = re.sub(rf'(id = {node}\naddress = ")[^"]+(")', rf'\g<1>{address}\g<2>', text)
    out = cluster.parent / name
    out.write_text(text)
    return out


def _port_open(address: str) -> bool:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.2).close()
        return True
    except OSError:
        return False


# -- replay across sessions --------------------------------------------------------------------


def test_a_recorded_run_replayed_at_a_fresh_node_is_refused_message_by_message(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, nodes=3)  # a triangle: nodes 0 and 1 both send to node 2
    real = _address(cluster, 2)
    host, port = real.removeprefix("tcp://").rsplit(":", 1)
    proxy = RecordingProxy((host, int(port)))
    via_proxy = _with_address(cluster, 2, f"tcp://127.0.0.1:{proxy.port}", "cluster-proxy.toml")
    first = tmp_path / "first"
    first.mkdir()
    procs = {k: start_node(via_proxy if k != 2 else cluster, k, first, ROUNDS, nodes=3) for k in range(3)}
    try:
        finish(procs, first)
    finally:
        for p in procs.values():
            p.kill()
        proxy.close()
    recorded = [zmtp_messages(bytes(s)) for s in proxy.streams]
    messages = [m for stream in recorded for m in stream]
    sealed_in_session = [m for m in messages if _kind_and_session(m)[1]]
    inits = [m for m in messages if _kind_and_session(m) == (int(Kind.HANDSHAKE), b"")]
    assert len(inits) >= 2 and len(sealed_in_session) >= 2 * ROUNDS, "the recording missed the run"
    assert len(messages) == len(inits) + len(sealed_in_session)  # nothing else is sent to a ROUTER

    # A fresh node 2 (same keys, same address), alone: its neighbours' processes are gone.
    second = tmp_path / "second"
    second.mkdir()
    config = tmp_path / "lone.toml"
    config.write_text("startup_timeout = 4.0\n")
    lone = start_node(cluster, 2, second, 3, "--config", str(config), nodes=3, round_timeout=1.0)
    try:
        deadline = time.monotonic() + 60
        while not _port_open(real):
            assert lone.poll() is None and time.monotonic() < deadline, "the fresh node never listened"
            time.sleep(0.05)
        replayers = [replay(bytes(stream), (host, int(port))) for stream in proxy.streams]
        finish({2: lone}, second)
        for s in replayers:
            s.close()
    finally:
        lone.kill()
    recs = node_records(second, 2)
    assert [r["arrived"] for r in recs] == [0, 0, 0], "the fresh node accepted something of the recording"
    dropped = recs[-1]["dropped"]
    # every message sealed in an earlier session (CONFIRMs, hellos, models) is counted; a replayed
    # INIT only earns a RESP nobody reads and a pending slot that is never confirmed
    assert dropped.get("no_session") == len(sealed_in_session), dropped
    record_fault("a whole recorded run (TCP bytes sent to node 2) replayed at a freshly started node 2", len(messages),
                 f"held: 0 accepted; all {len(sealed_in_session)} messages sealed in the earlier sessions counted as "
                 f"no_session; {len(inits)} replayed INITs earned only an unread RESP; the lone node arrived 0/2 "
                 "in every round", unit="message")


# -- one live identity per key ------------------------------------------------------------------


def _paced_run(tmp_path: Path, impostor: bool) -> tuple[dict[int, list[dict]], str, str]:
    """A 4-node ring; node 3 starts last, so nodes 0-2 hold still in their start-up barrier.

    With `impostor`, a second process of node 1 (its key file, another port) is started while
    they hold still, and must be refused before node 3 is started. Returns the records, the
    impostor's log and the real node 1's log.
    """
    cluster = make_cluster(tmp_path, nodes=4)
    procs = {k: start_node(cluster, k, tmp_path, ROUNDS, nodes=4, verbose=k == 1) for k in range(3)}
    impostor_log = ""
    try:
        deadline = time.monotonic() + 120
        # the real node 1 holds both its sessions (each neighbour accepted it) before any impostor runs
        while not all(f"node 1: session to node {j} agreed" in _log(tmp_path, 1) for j in (0, 2)):
            assert time.monotonic() < deadline, _log(tmp_path, 1)[-2000:]
            assert all(p.poll() is None for p in procs.values()), "a node exited early"
            time.sleep(0.1)
        if impostor:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                other = f"tcp://127.0.0.1:{s.getsockname()[1]}"
            twin_dir = tmp_path / "impostor"
            twin_dir.mkdir()
            twin = start_node(_with_address(cluster, 1, other, "cluster-impostor.toml"), 1, twin_dir, ROUNDS, nodes=4)
            try:
                code = twin.wait(timeout=120)
            except subprocess.TimeoutExpired:
                twin.kill()
                raise AssertionError("the impostor was never turned away")
            impostor_log = (twin_dir / "node-1.log").read_text()
            assert code != 0, impostor_log[-2000:]
            assert not node_records(twin_dir, 1), "the impostor ran rounds"
        procs[3] = start_node(cluster, 3, tmp_path, ROUNDS, nodes=4)
        finish(procs, tmp_path)
    finally:
        for p in procs.values():
            p.kill()
    return {k: node_records(tmp_path, k) for k in range(4)}, impostor_log, (tmp_path / "node-1.log").read_text()


def _log(tmp_path: Path, k: int) -> str:
    path = tmp_path / f"node-{k}.log"
    return path.read_text() if path.exists() else ""


def _trajectory(records: dict[int, list[dict]]) -> dict[int, list[tuple]]:
    return {k: [(r["round"], r["train_loss"], r["test_loss"], r["test_acc"], r["arrived"]) for r in recs]
            for k, recs in records.items()}


def test_a_second_process_with_a_nodes_key_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    control, _, _ = _paced_run(tmp_path / "control", impostor=False)
    attacked, impostor_log, real_log = _paced_run(tmp_path / "attacked", impostor=True)
    assert "another live process already runs as node 1" in impostor_log
    assert "Traceback" not in impostor_log
    assert "another process presented this node's identity" in real_log  # the real node is told
    for k in (0, 2):  # its neighbours refused, counted and logged it
        assert attacked[k][-1]["dropped"].get("duplicate_identity", 0) >= 1, attacked[k][-1]["dropped"]
        log = (tmp_path / "attacked" / f"node-{k}.log").read_text()
        assert "refused a second live process presenting node 1's identity" in log
    assert _trajectory(attacked) == _trajectory(control)  # bit-identical losses and accuracies
    record_fault("a second `p2pfl node` process started with node 1's key file (another port) while node 1 runs",
                 1, "held: both neighbours refused it (duplicate_identity, logged at error level), the real node 1 was "
                 "told, the impostor exited non-zero with a clear error, and every node's losses and accuracies were "
                 "bit-identical to the run without it", unit="process")
