"""A small network lab out of Linux network namespaces: N hosts on one bridge, plus faults.

Every host is a network namespace with one interface `eth0` (a veth pair whose other end is a
port of a bridge that lives in a namespace of its own) and one address on a private /24. Nothing
is created in the root namespace, so the lab cannot disturb this machine's own network, and
several labs can run side by side (even with the same addresses): every name carries a tag made
of the creating process id and a random part, and every lab has its own bridge.

Faults (each can be counted and undone):

- `loss(i, p)`            drop each packet host i receives with probability p (iptables statistic)
- `rate(i, "2mbit")`      shape what host i sends (tc tbf on its eth0)
- `partition([A, B])`     DROP every packet between hosts of different groups, both ways: on the
                          bridge (ebtables, the default: a cut in the middle of the network) or
                          in the hosts themselves (iptables, where="hosts")
- `heal()`                remove the partition rules again
- `link(i, up)`           take host i's bridge port down / up
- `redirect(i, ...)`      rewrite host i's outgoing TCP connections to another address (DNAT),
                          e.g. through a delaying relay (see scripts/relay.py)

Cleanup is always complete: `Lab` is a context manager; on leaving it (normally, on an
exception, on KeyboardInterrupt, on SIGTERM/SIGHUP while the lab is open, or at interpreter
exit) it ends the processes it started, then any process still inside its namespaces, then
deletes the namespaces (which deletes the veth pairs and the bridge with them). Labs of a
process that died without cleaning up (SIGKILL) are reaped by the next `Lab` or by
`python scripts/netns.py reap`.

Needs root, iproute2 (`ip`, `tc`) and the `iptables` package (iptables, ebtables);
`preflight()` says what is missing.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

PREFIX = "p2fl"
_NAME = re.compile(rf"^{PREFIX}(\d+)x[0-9a-f]{{4}}-")
CUT_CHAIN = "P2FL-CUT"
LOSS_CHAIN = "P2FL-LOSS"
IFNAME = "eth0"


class NetnsError(RuntimeError):
    """A command of the lab failed; the message has the command and its stderr."""


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command, capture its output; NetnsError (with stderr) if it fails and `check`."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def preflight() -> str | None:
    """Why network namespaces cannot be used here, or None if they can (creates and removes one)."""
    if os.geteuid() != 0:
        return f"network namespaces need root (running as uid {os.geteuid()})"
    for tool in ("ip", "tc", "iptables", "ebtables"):
        if shutil.which(tool) is None:
            hint = " (apt-get install -y iproute2)" if tool in ("ip", "tc") else " (apt-get install -y iptables)"
            return f"`{tool}` is not installed{hint}"
    probe = f"{PREFIX}{os.getpid()}x{secrets.token_hex(2)}-probe"
    try:
        sh("ip", "netns", "add", probe)
        sh("ip", "netns", "exec", probe, "iptables", "-S")
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace with iptables in it: {exc}"
    finally:
        sh("ip", "netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_pids_in(ns: str) -> None:
    """End (by id) every process inside namespace `ns`: the lab's own, started there by it."""
    pids = [int(p) for p in sh("ip", "netns", "pids", ns, check=False).stdout.split() if p.isdigit()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in pids if _pid_alive(p)]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _pid_alive(p)]
            time.sleep(0.05)
        if not alive:
            return


def reap_stale() -> list[str]:
    """Delete namespaces of labs whose creating process is gone; returns their names."""
    reaped = []
    for ns in list_namespaces():
        m = _NAME.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            _kill_pids_in(ns)
            sh("ip", "netns", "del", ns, check=False)
            reaped.append(ns)
    return reaped


@dataclass(frozen=True)
class Host:
    index: int
    ns: str
    address: str
    port_name: str  # its bridge port, inside the bridge namespace


class Lab:
    """`hosts` namespaces joined by veth pairs to one bridge in a namespace of its own."""

    def __init__(self, hosts: int, subnet: str = "10.231.0", tag: str | None = None) -> None:
        if not 1 <= hosts <= 250:
            raise ValueError(f"a lab has 1 to 250 hosts, not {hosts}")
        self.tag = tag or f"{PREFIX}{os.getpid()}x{secrets.token_hex(2)}"
        self.bridge_ns = f"{self.tag}-br"
        self.hosts = [Host(i, f"{self.tag}-h{i}", f"{subnet}.{i + 1}", f"p{i}") for i in range(hosts)]
        self._procs: list[subprocess.Popen] = []
        self._created: list[str] = []
        self._closed = False
        self._lock = threading.Lock()
        self._old_handlers: dict[int, object] = {}
        self.partitioned = False

    # -- life cycle ------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self._install_signal_handlers()
        atexit.register(self.close)
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def setup(self) -> None:
        reap_stale()
        self._add_ns(self.bridge_ns)
        sh("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for h in self.hosts:
            self._add_ns(h.ns)
            sh("ip", "link", "add", "name", IFNAME, "netns", h.ns, "type", "veth",
               "peer", "name", h.port_name, "netns", self.bridge_ns)
            sh("ip", "-n", self.bridge_ns, "link", "set", h.port_name, "master", "br0")
            sh("ip", "-n", self.bridge_ns, "link", "set", h.port_name, "up")
            sh("ip", "-n", h.ns, "addr", "add", f"{h.address}/24", "dev", IFNAME)
            sh("ip", "-n", h.ns, "link", "set", IFNAME, "up")
            sh("ip", "-n", h.ns, "link", "set", "lo", "up")

    def _add_ns(self, ns: str) -> None:
        sh("ip", "netns", "add", ns)
        self._created.append(ns)

    def close(self) -> None:
        """End the lab's processes, then delete its namespaces. Safe to call again."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            for p in self._procs:
                _end(p)
            for ns in reversed(self._created):
                _kill_pids_in(ns)
                sh("ip", "netns", "del", ns, check=False)
        finally:
            self._restore_signal_handlers()
            atexit.unregister(self.close)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; atexit still cleans up

        def raise_exit(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)  # unwinds the `with` block, which cleans up

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, raise_exit)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._old_handlers.items():
            try:
                signal.signal(sig, handler)  # type: ignore[arg-type]
            except (ValueError, TypeError):
                pass
        self._old_handlers.clear()

    # -- running things --------------------------------------------------------------------------

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[i].ns]

    def run(self, i: int, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside host i and wait for it."""
        return sh(*self.prefix(i), *argv, check=check)

    def popen(self, i: int, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start a process inside host i (own process group); the lab ends it on close."""
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen([*self.prefix(i), *argv], **kwargs)
        self._procs.append(proc)
        return proc

    # -- faults ----------------------------------------------------------------------------------

    def loss(self, i: int, probability: float) -> None:
        """Drop each packet host i receives on eth0 with `probability` (iptables statistic)."""
        if not 0 < probability < 1:
            raise ValueError(f"loss probability must be in (0, 1), got {probability}")
        self._chain(i, LOSS_CHAIN)
        self.run(i, "iptables", "-A", LOSS_CHAIN, "-m", "statistic", "--mode", "random",
                 "--probability", str(probability), "-j", "DROP")
        self._hook(i, LOSS_CHAIN, ("INPUT",))

    def rate(self, i: int, rate: str, burst: str = "16kb", latency: str = "500ms") -> None:
        """Shape what host i sends to `rate` (tc tbf on its eth0), e.g. rate(3, "2mbit")."""
        sh("tc", "-n", self.hosts[i].ns, "qdisc", "replace", "dev", IFNAME, "root", "tbf",
           "rate", rate, "burst", burst, "latency", latency)

    def partition(self, groups: Sequence[Iterable[int]], where: str = "bridge") -> None:
        """Cut the lab: every packet between hosts of different groups is dropped, both ways.

        where="bridge" (default): ebtables DROP rules on the bridge, in the middle of the
        network; the hosts cannot tell (their TCP retransmits and backs off, as across a real
        broken link). where="hosts": iptables DROP rules in every host (INPUT and OUTPUT); a
        host then sees its own sends fail (EPERM), and Linux TCP retries those every 500 ms
        without backing off, so connections come back faster than after a real cut.
        """
        groups = [sorted(set(g)) for g in groups]
        member = {i: k for k, g in enumerate(groups) for i in g}
        if len(member) != sum(len(g) for g in groups):
            raise ValueError(f"a host is in two groups: {groups}")
        if where not in ("bridge", "hosts"):
            raise ValueError(f"where must be 'bridge' or 'hosts', not {where!r}")
        pairs = [(i, j) for i, k in member.items() for j, other in member.items() if other != k]
        # The rules go into a chain that nothing jumps to yet; one jump rule then turns the whole
        # cut on at once (on the bridge), so no packet slips through a half-built cut.
        if where == "bridge":
            self._bridge_chain()
            for i, j in pairs:
                sh(*self._bridge_prefix(), "ebtables", "-A", CUT_CHAIN, "-p", "IPv4",
                   "--ip-src", self.hosts[i].address, "--ip-dst", self.hosts[j].address, "-j", "DROP")
            sh(*self._bridge_prefix(), "ebtables", "-A", "FORWARD", "-j", CUT_CHAIN)
        else:
            for i, j in pairs:
                self._chain(i, CUT_CHAIN)
                addr = self.hosts[j].address
                self.run(i, "iptables", "-A", CUT_CHAIN, "-s", addr, "-j", "DROP")
                self.run(i, "iptables", "-A", CUT_CHAIN, "-d", addr, "-j", "DROP")
            for i in member:
                self._hook(i, CUT_CHAIN, ("INPUT", "OUTPUT"))
        self.partitioned = True

    def heal(self, on_healed: Callable[[], None] | None = None) -> int:
        """Remove every partition rule (bridge and hosts); returns how many packets they dropped.

        on_healed: called the moment a bridge cut ends (its jump rule is gone), before the rules
        are counted and emptied: a caller can read what the hosts had done by then.
        """
        dropped = 0
        if self._has_bridge_chain():
            # unhook first (one rule: the cut ends at once), then count and empty the chain
            while sh(*self._bridge_prefix(), "ebtables", "-D", "FORWARD", "-j", CUT_CHAIN, check=False).returncode == 0:
                if on_healed is not None:
                    on_healed()
                    on_healed = None
            out = sh(*self._bridge_prefix(), "ebtables", "-L", CUT_CHAIN, "--Lc").stdout
            dropped += sum(int(n) for n in re.findall(r"pcnt = (\d+)", out))
            sh(*self._bridge_prefix(), "ebtables", "-F", CUT_CHAIN)
        for i in range(len(self.hosts)):
            if self._has_chain(i, CUT_CHAIN):
                self._unhook(i, CUT_CHAIN, ("INPUT", "OUTPUT"))
                dropped += self.dropped(i, CUT_CHAIN)
                self.run(i, "iptables", "-F", CUT_CHAIN)
        if on_healed is not None:  # a cut in the hosts ends as the last host's rules go
            on_healed()
        self.partitioned = False
        return dropped

    def _bridge_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.bridge_ns]

    def _has_bridge_chain(self) -> bool:
        return sh(*self._bridge_prefix(), "ebtables", "-L", CUT_CHAIN, check=False).returncode == 0

    def _bridge_chain(self) -> None:
        if not self._has_bridge_chain():
            sh(*self._bridge_prefix(), "ebtables", "-N", CUT_CHAIN, "-P", "RETURN")

    def link(self, i: int, up: bool) -> None:
        """Take host i's bridge port down (a pulled cable) or up again."""
        sh("ip", "-n", self.bridge_ns, "link", "set", self.hosts[i].port_name, "up" if up else "down")

    def redirect(self, i: int, dst: str, dport: int, to: str, to_port: int) -> None:
        """Host i's TCP connections to dst:dport go to to:to_port instead (nat OUTPUT DNAT)."""
        self.run(i, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", dst, "--dport", str(dport),
                 "-j", "DNAT", "--to-destination", f"{to}:{to_port}")

    # -- counters --------------------------------------------------------------------------------

    def dropped(self, i: int, chain: str) -> int:
        """Packets dropped so far by the DROP rules of `chain` in host i."""
        out = self.run(i, "iptables", "-L", chain, "-v", "-x", "-n").stdout
        total = 0
        for line in out.splitlines()[2:]:
            cols = line.split()
            if len(cols) >= 3 and cols[2] == "DROP":
                total += int(cols[0])
        return total

    def qdisc_stats(self, i: int) -> dict:
        """The root qdisc counters of host i's eth0 (bytes, packets, drops, overlimits, ...)."""
        out = sh("tc", "-n", self.hosts[i].ns, "-s", "-j", "qdisc", "show", "dev", IFNAME).stdout
        roots = [q for q in json.loads(out) if q.get("root")]
        return roots[0] if roots else {}

    def _has_chain(self, i: int, chain: str) -> bool:
        return self.run(i, "iptables", "-n", "-L", chain, check=False).returncode == 0

    def _chain(self, i: int, chain: str) -> None:
        if not self._has_chain(i, chain):
            self.run(i, "iptables", "-N", chain)

    @staticmethod
    def _jump(hook: str, chain: str) -> list[str]:
        return [hook, "-i" if hook == "INPUT" else "-o", IFNAME, "-j", chain]

    def _hook(self, i: int, chain: str, hooks: Sequence[str]) -> None:
        """Make `hooks` jump to `chain` first (once)."""
        for hook in hooks:
            rule = self._jump(hook, chain)
            if self.run(i, "iptables", "-C", *rule, check=False).returncode != 0:
                self.run(i, "iptables", "-I", rule[0], "1", *rule[1:])

    def _unhook(self, i: int, chain: str, hooks: Sequence[str]) -> None:
        for hook in hooks:
            while self.run(i, "iptables", "-D", *self._jump(hook, chain), check=False).returncode == 0:
                pass


def _end(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """End a process the lab started (its whole process group), politely first."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


# -- docs ----------------------------------------------------------------------------------------



def render_table(results: dict) -> str:
    """A markdown table (fault | how many times | outcome) of a results file's `faults`."""
    lines = ["| fault | how many times | outcome |", "|---|---|---|"]
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    for f in results["faults"]:
        count = f"{f['count']} {f.get('unit', '')}".strip()
        lines.append(f"| {cell(f['fault'])} | {cell(count)} | {cell(f['outcome'])} |")
    if results.get("run"):
        lines.append("")
        lines.append(results["run"])
    return "\n".join(lines)


def render_doc(results_path: Path, doc_path: Path) -> bool:
    """Replace the block between the markers named for the results file (`<!-- netns-results:begin
    -->` for netns.json, `<!-- netns-secure-results:begin -->` for netns-secure.json, and their
    `:end`) in `doc_path` by the table; False if no such markers."""
    if not doc_path.exists():
        return False
    text = doc_path.read_text()
    begin, end_marker = (f"<!-- {results_path.stem}-results:{edge} -->" for edge in ("begin", "end"))
    start, end = text.find(begin), text.find(end_marker)
    if start < 0 or end < start:
        return False
    table = render_table(json.loads(results_path.read_text()))
    new = text[: start + len(begin)] + "\n" + table + "\n" + text[end:]
    if new != text:
        tmp = doc_path.with_suffix(doc_path.suffix + f".tmp{os.getpid()}")
        tmp.write_text(new)
        tmp.replace(doc_path)
    return True


def main(argv: list[str]) -> int:
    usage = "usage: netns.py reap | check | render RESULTS.json DOC.md"
    if argv[:1] == ["reap"]:
        for ns in reap_stale():
            print(f"deleted {ns}")
        return 0
    if argv[:1] == ["check"]:
        reason = preflight()
        print(reason or "network namespaces work here")
        return 1 if reason else 0
    if argv[:1] == ["render"] and len(argv) == 3:
        return 0 if render_doc(Path(argv[1]), Path(argv[2])) else 1
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
