"""Bad configuration through the real command line: rejected before anything starts, clearly.

Every case runs `python -m p2pfl.cli ...` as a user would (a subprocess, so the exit status and
stderr are exactly what a terminal shows) against files built the way `simulate` builds them
(`simulate.prepare_cluster`: keys from `crypto.write_keypair`, `config.write_cluster`), with one
thing broken. Each must exit non-zero with a message that names the field or file and the
problem, and without a Python traceback; node commands must stop before their first round
(their --metrics file stays empty) and `simulate` before it creates its run directory or starts
a process. Each case's outcome goes to the fault table (tests/faultlog.py).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from faultlog import Recording, recording

from p2pfl import cli
from p2pfl import simulate as simulate_module
from p2pfl.config import ExperimentConfig
from p2pfl.simulate import prepare_cluster

NODES = 3
CLI_TIMEOUT = 120  # seconds; a rejected command takes 0.3-3 s
# A node that wrongly gets past validation is over within seconds: no neighbours come up.
EXPERIMENT = f"""\
[experiment]
nodes = {NODES}
rounds = 2
startup_timeout = 1.0
round_timeout = 1.0
"""


# -- helpers ---------------------------------------------------------------------------------


def p2pfl(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m p2pfl.cli ARGS` in `cwd`, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "p2pfl.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT)


def normalise(text: str, tmp_path: Path) -> str:
    """Without the parts that change between runs (temporary paths, ports), for the fault table."""
    text = text.replace(str(tmp_path) + "/", "").replace(str(tmp_path), ".")
    return re.sub(r"(127\.0\.0\.1|localhost):\d+", r"\1:PORT", text)


def observed(proc: subprocess.CompletedProcess, tmp_path: Path) -> str:
    """What the user saw, in one line: the exit status and the error (or the traceback's last line)."""
    out = normalise(proc.stderr + proc.stdout, tmp_path)
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    if "Traceback (most recent call last)" in out:
        return f"exit {proc.returncode} with a raw traceback: {lines[-1]}"
    errors = [line for line in lines if line.startswith("Error:")]
    shown = errors[0] if errors else (lines[-1] if lines else "(no output)")
    if len(shown) > 220:
        shown = shown[:217] + "..."
    return f"rejected, exit {proc.returncode}: {shown}"


def assert_rejected(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Non-zero exit, a click error message containing every needle, and no traceback."""
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0, f"accepted (exit 0):\n{out[-2000:]}"
    assert "Traceback" not in out, f"a raw traceback instead of a message:\n{out[-3000:]}"
    assert "Error:" in proc.stderr, f"no error message on stderr:\n{out[-2000:]}"
    message = " ".join(proc.stderr.split())  # click and rich may wrap long lines
    for needle in needles:
        assert needle in message, f"{needle!r} not in the message:\n{proc.stderr[-2000:]}"


def check(rec: Recording, proc: subprocess.CompletedProcess, tmp_path: Path, *needles: str) -> None:
    rec.outcome = observed(proc, tmp_path)
    assert_rejected(proc, *needles)


class Run:
    """A valid 3-node ring as `simulate` prepares it (keys, topology.json, cluster.toml) plus an experiment file."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.cluster = prepare_cluster(ExperimentConfig(nodes=NODES, topology="ring").validate(), tmp_path)
        self.experiment = tmp_path / "experiment.toml"
        self.experiment.write_text(EXPERIMENT)
        self.metrics = tmp_path / "metrics-0.jsonl"

    def key(self, node: int) -> Path:
        return self.dir / "keys" / f"node{node}.key"

    def address(self, node: int) -> str:
        return re.findall(r'address = "([^"]+)"', self.cluster.read_text())[node]

    def node(self, *extra: str, node: int = 0) -> subprocess.CompletedProcess:
        return p2pfl(self.dir, "node", "--cluster", self.cluster.name, "--id", str(node), "--config",
                     self.experiment.name, "--metrics", self.metrics.name, *extra)

    def rounds_run(self) -> int:
        return len(self.metrics.read_text().splitlines()) if self.metrics.exists() else 0

    def edit_cluster(self, old: str, new: str) -> None:
        text = self.cluster.read_text()
        assert old in text, old
        self.cluster.write_text(text.replace(old, new, 1))


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(tmp_path)


def test_the_valid_files_are_accepted(run: Run) -> None:
    """The premise: the files the cases break are good (a lone node runs its rounds and exits 0)."""
    proc = run.node()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run.rounds_run() == 2


# -- keys ------------------------------------------------------------------------------------


def test_missing_key_file(run: Run) -> None:
    with recording("node: its private key file is missing") as rec:
        run.key(0).unlink()
        proc = run.node()
        check(rec, proc, run.dir, "node0.key", "key file not found")
        assert not run.metrics.exists()


def test_missing_key_given_with_key_option(run: Run) -> None:
    with recording("node: --key names a file that does not exist") as rec:
        proc = run.node("--key", "keys/nobody.key")
        check(rec, proc, run.dir, "keys/nobody.key", "key file not found")
        assert not run.metrics.exists()


def test_private_key_readable_by_others(run: Run) -> None:
    with recording("node: private key readable by others (chmod 0644)") as rec:
        run.key(0).chmod(0o644)
        proc = run.node()
        check(rec, proc, run.dir, "node0.key", "readable or writable by group/others", "0644", "chmod 600")
        assert not run.metrics.exists()


def test_key_of_another_node(run: Run) -> None:
    with recording("node: --key is another node's private key") as rec:
        proc = run.node("--key", "keys/node1.key")
        check(rec, proc, run.dir, "node1.key", "node 0")
        assert not run.metrics.exists()


# -- the cluster file ------------------------------------------------------------------------


def test_missing_cluster_file(run: Run) -> None:
    with recording("node: the cluster file does not exist") as rec:
        run.cluster.unlink()
        proc = run.node()
        check(rec, proc, run.dir, "cluster.toml", "does not exist")


def test_duplicate_addresses_in_the_cluster(run: Run) -> None:
    with recording("node: two nodes with the same address in the cluster file") as rec:
        run.edit_cluster(run.address(1), run.address(0))
        proc = run.node()
        check(rec, proc, run.dir, "cluster.toml", "address", run.address(0), "also used by node 0")
        assert not run.metrics.exists()


def test_topology_file_and_cluster_disagree_on_node_ids(run: Run) -> None:
    with recording("node: topology file and cluster file disagree on the node ids") as rec:
        run.edit_cluster("id = 2", "id = 7")  # topology.json still has nodes 0, 1, 2
        proc = run.node()
        check(rec, proc, run.dir, "cluster.toml", "topology", "[7]", "[2]")
        assert not run.metrics.exists()


def test_node_id_not_in_the_cluster(run: Run) -> None:
    with recording("node: --id is not in the cluster") as rec:
        proc = run.node(node=5)
        check(rec, proc, run.dir, "id", "node 5 is not in the cluster")
        assert not run.metrics.exists()


def test_experiment_and_cluster_disagree_on_the_node_count(run: Run) -> None:
    with recording("node: the experiment's node count differs from the cluster's") as rec:
        proc = run.node("--nodes", "4")
        check(rec, proc, run.dir, "nodes", "4 nodes", "has 3")
        assert not run.metrics.exists()


# -- the node's own resources ------------------------------------------------------------------


def test_port_already_in_use(run: Run) -> None:
    host, port = run.address(0).removeprefix("tcp://").rsplit(":", 1)
    with recording("node: its port is already in use (another socket listens on it)") as rec:
        with socket.socket() as blocker:
            blocker.bind((host, int(port)))
            blocker.listen()
            proc = run.node()
        rec.outcome = observed(proc, run.dir)
        assert proc.returncode != 0, proc.stderr[-2000:]
        assert run.rounds_run() == 0
        check(rec, proc, run.dir, f"{host}:{port}")


def test_metrics_file_in_a_missing_directory(run: Run) -> None:
    with recording("node: --metrics in a directory that does not exist") as rec:
        proc = run.node("--metrics", "no/such/dir/metrics.jsonl")
        check(rec, proc, run.dir, "no/such/dir/metrics.jsonl")


def test_checkpoint_dir_that_cannot_be_created(run: Run) -> None:
    (run.dir / "a-file").write_text("not a directory\n")
    with recording("node: --checkpoint-dir cannot be created (its parent is a file)") as rec:
        started = time.monotonic()
        proc = run.node("--checkpoint-dir", "a-file/ckpt")
        took = time.monotonic() - started
        rec.outcome = observed(proc, run.dir) + f" (after {run.rounds_run()} rounds)"
        assert proc.returncode != 0
        assert run.rounds_run() == 0, f"the node ran {run.rounds_run()} rounds ({took:.0f}s) before noticing"
        check(rec, proc, run.dir, "a-file/ckpt")


# -- experiment settings -------------------------------------------------------------------------


def test_unknown_setting_in_the_experiment_file(run: Run) -> None:
    run.experiment.write_text(EXPERIMENT + 'colour = "blue"\n')
    with recording("simulate and node: unknown setting in the experiment TOML", 2, unit="commands") as rec:
        proc = p2pfl(run.dir, "simulate", "--config", run.experiment.name, "--out", "out")
        check(rec, proc, run.dir, "experiment.toml", "colour", "unknown setting")
        assert not (run.dir / "out").exists()
        proc = run.node()
        check(rec, proc, run.dir, "experiment.toml", "colour", "unknown setting")
        assert not run.metrics.exists()


BAD_VALUES = [
    ("--rounds", "0", ("rounds", "must be >= 1, got 0")),
    ("--partition", "foo", ("--partition", "'foo'", "iid", "dirichlet")),
    ("--nodes", "1", ("nodes",)),
    ("--lr", "-0.1", ("lr", "must be >= 0")),
    ("--round-timeout", "0", ("round_timeout", "must be > 0")),
    ("--eval-every", "0", ("eval_every", "must be >= 1")),
    ("--alpha", "0", ("alpha", "must be > 0")),
    ("--rounds", "ten", ("--rounds", "'ten'")),
    # every secure-aggregation parameter is a setting, checked before anything starts
    ("--secagg-clip", "0", ("secagg_clip", "must be > 0, got 0")),
    ("--secagg-clip", "nan", ("secagg_clip", "must be a finite number")),
    ("--secagg-bits", "64", ("secagg_bits", "must be one of 32, got 64")),
    ("--secagg-sparse-above", "1", ("secagg_sparse_above", "must be >= 2, got 1")),
    ("--secagg-sparse-degree", "1", ("secagg_sparse_degree", "must be 0 (automatic) or >= 2")),
    ("--secagg-max-samples", "0", ("secagg_max_samples", "must be in [1, 1099511627776)")),
    ("--secagg-patience", "0", ("secagg_patience", "must be >= 1, got 0")),
    ("--secagg-max-deadlines", "3", ("secagg_max_deadlines", "must be >= 4 (one per aggregator phase), got 3")),
    ("--secagg-threshold", "0.4", ("secagg_threshold", "must be in [0.5, 1)")),
    ("--min-contributors", "1", ("min_contributors", "must be >= 2")),
    ("--secagg-patience", "three", ("--secagg-patience", "'three'")),
]


def test_bad_secagg_setting_in_the_experiment_file(run: Run) -> None:
    run.experiment.write_text(EXPERIMENT + "secure_agg = true\nsecagg_max_deadlines = 2\n")
    with recording("simulate and node: secagg_max_deadlines = 2 in the experiment TOML", 2, unit="commands") as rec:
        proc = p2pfl(run.dir, "simulate", "--config", run.experiment.name, "--out", "out")
        check(rec, proc, run.dir, "experiment.toml", "secagg_max_deadlines", "must be >= 4")
        assert not (run.dir / "out").exists()
        proc = run.node()
        check(rec, proc, run.dir, "experiment.toml", "secagg_max_deadlines", "must be >= 4")
        assert not run.metrics.exists()


@pytest.mark.parametrize("option, value, needles", BAD_VALUES, ids=[f"{o}={v}" for o, v, _ in BAD_VALUES])
def test_bad_values_on_the_command_line(tmp_path: Path, option: str, value: str, needles: tuple[str, ...]) -> None:
    with recording(f"simulate {option} {value}") as rec:
        proc = p2pfl(tmp_path, "simulate", option, value, "--out", "out")
        check(rec, proc, tmp_path, *needles)
        assert not (tmp_path / "out").exists()


# -- topologies ----------------------------------------------------------------------------------

MALFORMED = {
    "truncated.json": ("{nope", ("truncated.json:1", "invalid JSON")),
    "list.json": ("[1, 2]", ("list.json", "node-link JSON object")),
    "dangling.json": ('{"nodes": [{"id": 0}, {"id": 1}], "links": [{"source": 0, "target": 2}]}',
                      ("dangling.json", "target 2 is not listed")),
    "letters.edgelist": ("0 1\n1 x\n", ("letters.edgelist:2", "'x' is not an integer")),
    "loop.edgelist": ("0 0\n0 1\n", ("loop.edgelist:1", "self-loop")),
    "split.edgelist": ("0 1\n2 3\n", ("split.edgelist", "not connected")),
    "broken.graphml": ('<graphml><graph edgedefault="undirected"><node id="a"/>', ("broken.graphml", "not a valid GraphML")),
    "binary.edgelist": (b"\xff\xfe0 1\n", ("binary.edgelist", "not UTF-8")),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_topology_file(tmp_path: Path, name: str) -> None:
    content, needles = MALFORMED[name]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with recording(f"topology show: malformed file ({name})") as rec:
        proc = p2pfl(tmp_path, "topology", "show", name)
        check(rec, proc, tmp_path, *needles)


def test_missing_topology_file(tmp_path: Path) -> None:
    with recording("topology show: the file does not exist") as rec:
        proc = p2pfl(tmp_path, "topology", "show", "missing.json")
        check(rec, proc, tmp_path, "missing.json", "no such topology file")


def test_torus_that_cannot_be_factored_starts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with recording("simulate --topology torus --nodes 8 (8 has no rows x cols factoring with both >= 3)",
                   2, unit="runs") as rec:
        proc = p2pfl(tmp_path, "simulate", "--topology", "torus", "--nodes", "8", "--out", "out")
        check(rec, proc, tmp_path, "topology", "torus", "n=8", "does not factor")
        assert not (tmp_path / "out").exists()
        # In-process too, where we can see that no simulation (so no process) was started.
        def started(*args: object, **kwargs: object) -> None:
            raise AssertionError("run_simulation was called")

        monkeypatch.setattr(simulate_module, "run_simulation", started)
        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke(cli.main, ["simulate", "--topology", "torus", "--nodes", "8", "--out", "out2"])
        assert result.exit_code == 2, result.output
        assert "does not factor" in result.output
        assert not (tmp_path / "out2").exists()
