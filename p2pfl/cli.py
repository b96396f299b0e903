"""The `p2pfl` command line: parse, build a validated config, call the module that does the work.

Owns option names, help texts and turning errors into clear messages with a non-zero exit.
It holds no protocol or training logic.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
from dataclasses import fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from p2pfl.config import Cluster, ConfigError, ExperimentConfig, choices_of, default_text, json_schema, option_names, reference_markdown

console = Console(stderr=True)
if not console.is_terminal:
    console.width = 160  # logs and CI: do not squeeze the comparison table into 80 columns


def _experiment_options(command: str) -> Any:
    """The options of `command` (simulate, compare or node) that override the experiment file.

    Generated from `ExperimentConfig`'s fields (`config.setting`): flag, type, choices, help and
    the default shown in --help all come from the field. An option left out is None, so the file
    (or the built-in default) decides.
    """

    def decorate(f: Any) -> Any:
        opts = [click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Experiment TOML file.")]
        opts += [_setting_option(fld) for fld in fields(ExperimentConfig) if command in fld.metadata["commands"]]
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


def _setting_option(fld: Any) -> Any:
    """The click option of one `ExperimentConfig` field."""
    meta = fld.metadata
    kind = str(fld.type)
    help_text = f"{meta['help']} [default: {_shown_default(fld)}]"
    extra: dict[str, Any] = {}
    choices = choices_of(fld)
    if kind == "bool":
        extra["default"] = None
    elif choices is not None and kind == "str":
        extra["type"] = click.Choice(list(choices))
    elif meta["directory"]:
        extra["type"] = click.Path(file_okay=False)
    else:
        extra["type"] = {"int": int, "float": float, "str": str}[kind]
    return click.option(*option_names(fld), fld.name, help=help_text, hidden=meta["hidden"], **extra)


def _shown_default(fld: Any) -> str:
    """The field's default as --help shows it: a value, "" for empty text, the flag that is on for a boolean."""
    if str(fld.type) == "bool":
        on, off = option_names(fld)[0].split("/")
        return on if fld.default else off
    return default_text(fld.default) if fld.default == "" else str(fld.default)


def _config(config_file: str | None, defaults: dict[str, Any] | None = None, **overrides: Any) -> ExperimentConfig:
    """The validated experiment: built-in defaults < `defaults` < the config file < the options."""
    try:
        cfg = ExperimentConfig.load(config_file, overrides, defaults)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    _check_task(cfg.task)
    return cfg


def _check_task(spec: str) -> None:
    """A plug-in task's module and function must exist before anything starts.

    The config already refused unknown built-in names; importing a plug-in means importing torch,
    so only plug-in specs get this far.
    """
    if ":" not in spec:
        return
    from p2pfl.training import check_task

    try:
        check_task(spec)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Click callback: a float option that means nothing as nan or inf (click's FLOAT accepts both)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}")
    return value


@click.group()
@click.option("-v", "--verbose", count=True, help="-v for info logs, -vv for debug.")
def main(verbose: int) -> None:
    """p2pfl: peer-to-peer decentralized learning with encrypted gossip and secure aggregation."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


@main.command()
@_experiment_options("simulate")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/simulate-TIMESTAMP).")
@click.option("--dashboard", is_flag=True, help="Serve the live web dashboard of this run (docs/dashboard.md); "
              "it keeps serving after the run until Ctrl-C.")
@click.option("--dashboard-port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="The dashboard's port (0: any free one).")
@click.option("--dashboard-host", default="127.0.0.1", show_default=True,
              help="Address the dashboard binds; anything but loopback shows the run's metrics to the network.")
def simulate(config_file: str | None, out: str | None, dashboard: bool, dashboard_port: int, dashboard_host: str,
             **overrides: Any) -> None:
    """Run every node of a topology on this host: real processes, sockets and crypto."""
    from p2pfl.simulate import SimulationFailed, run_simulation

    cfg = _config(config_file, **overrides)
    _check_graph(cfg)
    run_dir = Path(out or f"runs/simulate-{_stamp()}")
    board = _start_dashboard([str(run_dir)], dashboard_host, dashboard_port) if dashboard else None
    try:
        try:
            result = run_simulation(cfg, run_dir, console)
        except BaseException:
            if board is not None:  # the run failed: its dashboard goes too
                _stop_dashboard(board)
            raise
    except ConfigError as exc:  # known once the task loads, before any node starts: a plug-in's data too small
        raise click.UsageError(str(exc)) from exc
    except SimulationFailed as exc:
        raise click.ClickException(str(exc)) from exc
    s = result.summary
    console.print(f"[bold]{s['label']}[/]: final accuracy {s['final_acc_mean']:.3f} ± {s['final_acc_std']:.3f} "
                  f"over {s['nodes']} nodes, {s['rounds']} rounds in {s['wall_time']:.1f}s, "
                  f"peak memory {s['peak_rss_mb']:.0f} MiB")
    if s.get("epsilon_max") is not None:
        console.print(f"privacy: epsilon {s['epsilon_max']:.3f} at delta {s['dp_delta']:g} (largest over nodes, {cfg.dp} DP)")
    console.print(f"run directory: {run_dir}")
    if board is not None:
        _serve_until_interrupted(board)


def _start_dashboard(run_dirs: list[str], host: str, port: int) -> Any:
    """Serve the dashboard of `run_dirs` from a process of its own (`p2pfl dashboard`), so that the
    launcher keeps its CPU and forks its workers with no server thread in it. The socket is bound
    here (a busy port is refused at once) and handed over; the run directory may not exist yet."""
    import subprocess

    from p2pfl.dashboard.listen import bind, is_loopback, url_of

    try:
        sock = bind(host, port)
    except OSError as exc:
        raise click.UsageError(f"--dashboard-port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    cmd = [sys.executable, "-m", "p2pfl.cli", "dashboard", *run_dirs, "--host", host,
           "--listen-fd", str(sock.fileno()), "--parent-pid", str(os.getpid())]
    try:
        child = subprocess.Popen(cmd, pass_fds=[sock.fileno()])
        url = url_of(sock)
    finally:
        sock.close()  # the dashboard's process holds it now; the workers forked later must not
    if not is_loopback(host):
        console.print(f"[yellow]dashboard bound to {host}: anyone who reaches it sees the run's metrics[/]")
    console.print(f"dashboard: {url}")
    return child, url


def _serve_until_interrupted(board: Any) -> None:
    """After the run: the dashboard serves on until Ctrl-C or SIGTERM, then it is stopped."""
    import signal
    import threading

    child, url = board
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # before the line that says so: a SIGTERM from then on stops it cleanly
    console.print(f"dashboard: the run is over; still serving {url} (Ctrl-C to stop)")
    try:
        while not stop.wait(0.5) and child.poll() is None:
            pass
    except KeyboardInterrupt:
        pass
    _stop_dashboard(board)


def _stop_dashboard(board: Any) -> None:
    child, _ = board
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except Exception:  # noqa: BLE001 - it did not stop in time: it must not outlive us
            child.kill()


@main.command()
@_experiment_options("compare")
@click.option("--topologies", default=None, help="Comma-separated names/files; star-fedavg is the baseline.")
@click.option("--secure-mode", type=click.Choice(["off", "on", "both"]), default="off", help="Run plain, secure, or both side by side.")
@click.option("--variants", default=None,
              help="Comma-separated variants run on every topology, e.g. plain,secure,secure+dp "
                   "(tokens joined by +: plain, secure, dp, q8, q16). Replaces --secure-mode.")
@click.option("--target", type=float, default=0.9, show_default=True, callback=_finite,
              help="Target accuracy for the table.")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory (default runs/compare-TIMESTAMP).")
@click.option("--audit", "audit_runs", is_flag=True,
              help="Audit every run (needs --record K): privacy and accuracy side by side, and a trade-off plot.")
@click.option("--noise-levels", default=None,
              help="Comma-separated DP noise multipliers: each variant with dp runs once per level, e.g. 0.5,1,2.")
def compare(config_file: str | None, topologies: str | None, secure_mode: str, variants: str | None, target: float,
            out: str | None, audit_runs: bool, noise_levels: str | None, **overrides: Any) -> None:
    """Same task, seed and partition on several topologies plus the star-FedAvg baseline.

    Default: ring, torus, random 4-regular, complete and star-FedAvg on 16 nodes. With
    --variants each topology runs once per variant (plain, secure, secure + DP, ...); the
    table then has an epsilon column.
    """
    from p2pfl import report
    from p2pfl.simulate import DEFAULT_COMPARE, SimulationFailed, compare_configs, run_dir_name, run_simulation

    if overrides.get("nodes") is None and config_file is None:
        overrides["nodes"] = 16  # the default set includes a 2-D torus (4 x 4)
    base = _config(config_file, **overrides)
    specs = [s.strip() for s in topologies.split(",")] if topologies else list(DEFAULT_COMPARE)
    if variants is not None and secure_mode != "off":
        raise click.UsageError("--variants replaces --secure-mode: give one of them")
    try:
        names = [v.strip() for v in variants.split(",") if v.strip()] if variants is not None else None
        configs = compare_configs(base, specs, secure_mode, names)
        configs = _noise_levels(configs, noise_levels)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if audit_runs and not base.record:
        raise click.UsageError("--audit attacks what a coalition recorded: give --record K (e.g. --record 0)")
    out_dir = Path(out or f"runs/compare-{_stamp()}")
    for cfg in configs:
        try:
            run_simulation(cfg, out_dir / run_dir_name(cfg), console)
        except ConfigError as exc:  # as in simulate
            raise click.UsageError(str(exc)) from exc
        except SimulationFailed as exc:
            raise click.ClickException(f"{cfg.display_label()}: {exc}") from exc
    report.main([str(out_dir)], str(out_dir), target, console)
    if audit_runs:
        _audit([str(out_dir / run_dir_name(cfg)) for cfg in configs], str(out_dir), 0)


def _noise_levels(configs: list[ExperimentConfig], levels: str | None) -> list[ExperimentConfig]:
    """Each config with DP once per noise multiplier of `levels` (others unchanged)."""
    if levels is None:
        return configs
    try:
        zs = [float(z) for z in levels.split(",") if z.strip()]
    except ValueError:
        raise ConfigError("noise_levels", f"{levels!r}: give noise multipliers separated by commas, e.g. 0.5,1,2") from None
    if not zs or any(not math.isfinite(z) or z <= 0 for z in zs):
        raise ConfigError("noise_levels", f"{levels!r}: every noise multiplier must be a positive number")
    out = []
    for cfg in configs:
        if not cfg.dp_enabled:
            out.append(cfg)
            continue
        for z in zs:
            out.append(replace(cfg, dp_noise=z, label=f"{cfg.display_label()}-z{z:g}").validate())
    return out


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--window", type=click.IntRange(min=0), default=0, show_default=True,
              help="Reconstruct only the last this many rounds (0: all that fit).")
@click.option("--out", type=click.Path(file_okay=False), help="With several runs: where to write the side-by-side table "
              "and the trade-off plot (default: the first directory's parent).")
def audit(run_dirs: tuple[str, ...], window: int, out: str | None) -> None:
    """Attack recorded runs (simulate --record K) as their coalition would: reconstruction and membership inference.

    The attacks read only the coalition's view (config.json, topology.json, view/); the ground
    truth (truth/, models/) only scores them. Writes RUN_DIR/audit/ (audit.json, audit.md, a plot)
    and prints the table; a compare directory audits every run in it.
    """
    _audit(list(run_dirs), out, window)


def _audit(run_dirs: list[str], out: str | None, window: int) -> None:
    from p2pfl.audit import tradeoff
    from p2pfl.audit.score import run_audit, table
    from p2pfl.audit.truth import TruthError
    from p2pfl.audit.view import ViewError
    from p2pfl.topology import TopologyError

    dirs: list[Path] = []
    for d in map(Path, run_dirs):
        found = [d] if (d / "view").is_dir() else sorted(p for p in d.iterdir() if (p / "view").is_dir())
        if not found:
            raise click.UsageError(f"{d}: not a recorded run (no view/): run simulate (or compare) with --record K")
        dirs += found
    results = []
    for d in dirs:
        try:
            results.append(run_audit(d, window))
        except (ViewError, TruthError, TopologyError) as exc:
            raise click.UsageError(f"{d}: {exc}") from exc
    click.echo(table(results), nl=False)
    if len(results) > 1:
        where = Path(out) if out else dirs[0].parent
        written = tradeoff.write(where, results)
        console.print("wrote " + ", ".join(map(str, written)))
    else:
        console.print(f"wrote {dirs[0] / 'audit'}")


@main.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Where to write the table and plots.")
@click.option("--target", type=float, default=0.9, show_default=True, callback=_finite)
@click.option("--html", "html", is_flag=True, help="Also write report.html: one self-contained page (scripts and "
              "data inlined, no network) with the dashboard's views.")
def report_cmd(run_dirs: tuple[str, ...], out: str | None, target: float, html: bool) -> None:
    """Re-render the table and plots of finished runs (or a compare directory)."""
    from p2pfl import report

    try:
        files = report.main(list(run_dirs), out, target, console)
    except report.ReportError as exc:
        raise click.UsageError(str(exc)) from exc
    if html:
        from p2pfl import htmlreport

        page = htmlreport.write(list(run_dirs), files.markdown.parent / htmlreport.REPORT_FILE)
        console.print(f"  {page.name} (self-contained)")


@main.command("dashboard")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback shows the runs' metrics to the network (docs/dashboard.md).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port (0: any free one).")
@click.option("--listen-fd", type=int, hidden=True, help="A socket already bound and listening (simulate --dashboard).")
@click.option("--parent-pid", type=int, hidden=True, help="Stop when this process is gone (simulate --dashboard).")
def dashboard_cmd(run_dirs: tuple[str, ...], host: str, port: int, listen_fd: int | None, parent_pid: int | None) -> None:
    """Serve the web dashboard of run directories (finished, or still being written), read-only.

    A compare directory counts as all its runs; the directories the nodes of one experiment
    write on their own machines (`p2pfl node --run-dir`) are shown as one run.
    """
    from p2pfl.dashboard.runs import open_runs
    from p2pfl.dashboard.server import Dashboard, is_loopback

    if listen_fd is not None:  # started by simulate --dashboard, which printed the URL
        board = Dashboard(open_runs(list(run_dirs)), host=host, sock=socket.socket(fileno=listen_fd))
        board.start()
        board.wait_for_interrupt(parent=parent_pid)
        return
    try:
        board = Dashboard(open_runs(list(run_dirs)), host=host, port=port)
    except OSError as exc:
        raise click.UsageError(f"--port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    if not is_loopback(host):
        console.print(f"[yellow]bound to {host}: anyone who reaches it sees the runs' metrics[/]")
    console.print(f"dashboard: {board.url} (Ctrl-C to stop)")
    board.start()
    board.wait_for_interrupt()


@main.command()
@click.option("--cluster", "cluster_file", required=True, type=click.Path(dir_okay=False), help="Cluster TOML file.")
@click.option("--id", "node_id", required=True, type=int, help="This node's id in the cluster.")
@click.option("--key", "key_file", type=click.Path(dir_okay=False), help="Private key (default: key_file of the cluster entry).")
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Write this node's run directory here (config.json, metrics.jsonl, summary.json, models/): the "
                   "layout simulate writes, for one node. `p2pfl report` merges the directories of all the nodes.")
@click.option("--metrics", type=click.Path(dir_okay=False),
              help="Also append this node's per-round records (metrics.jsonl lines) to this file.")
@click.option("--fresh", is_flag=True, help="Start from round 1: delete this node's checkpoints in --checkpoint-dir first "
                                            "(a node refuses to start over on its own when none of them is usable).")
@click.option("--record", "record_flag", hidden=True, default=None,
              help="Refused: recording a node's view for a privacy audit is for `p2pfl simulate` only.")
@_experiment_options("node")
def node(config_file: str | None, cluster_file: str, node_id: int, key_file: str | None, run_dir: str | None,
         metrics: str | None, fresh: bool, record_flag: str | None, **overrides: Any) -> None:
    """Run one node of a cluster until its rounds are done (one per machine, or several)."""
    import time

    import torch

    from p2pfl.checkpoint import CheckpointRefused, CheckpointStore
    from p2pfl.crypto import KeyFileError
    from p2pfl.launch import build_node, load_node_key, load_workload
    from p2pfl.record import RunDirError, record_line
    from p2pfl.session import DuplicateIdentity

    try:
        if record_flag is not None:
            raise ConfigError("record", RECORD_REFUSED)
        cfg, cluster = _node_setup(config_file, cluster_file, overrides)
        if cfg.record:
            raise ConfigError("record", RECORD_REFUSED)
        entry = cluster.require(node_id)
        private_key = load_node_key(cluster, node_id, key_file)
        if fresh and not cfg.checkpoint_dir:
            raise ConfigError("fresh", "--fresh discards checkpoints: it needs --checkpoint-dir")
        _check_resources(entry.address, metrics, cfg.checkpoint_dir, node_id)
        ran = replace(cfg, topology=cluster.topology_spec)  # what the node runs: the cluster's topology
        out = _open_run_dir(run_dir, ran, node_id)
    except (ConfigError, KeyFileError, RunDirError) as exc:
        raise click.UsageError(str(exc)) from exc
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        workload = load_workload(cfg)
    except ValueError as exc:  # a plug-in task that fails when called, or cannot be split this way
        raise click.UsageError(str(exc)) from exc
    if out is not None:  # every node computes the same split: its directory records all of it, as simulate's does
        from p2pfl.simulate import draw_labels, record_labels

        draw_labels(record_labels(cfg, Path(run_dir), workload), Path(run_dir))
    if fresh:
        store_dir = Path(cfg.checkpoint_dir) / f"node-{node_id}"
        try:
            gone = CheckpointStore(store_dir).discard()
        except OSError as exc:
            raise click.ClickException(f"--fresh: cannot delete the checkpoints in {store_dir} ({exc})") from exc
        console.print(f"node {node_id}: --fresh: starting from round 1, {gone} old checkpoint file(s) in {store_dir} deleted")
    sink = open(metrics, "a") if metrics else None

    def on_round(record: Any) -> None:
        if sink is not None:
            sink.write(record_line(record))
            sink.flush()
        if out is not None:
            out.append(record)

    started = time.monotonic()
    try:
        built = build_node(cfg, cluster, node_id, workload=workload, private_key=private_key, on_round=on_round)
        records = built.run()
    except (CheckpointRefused, DuplicateIdentity) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if sink is not None:
            sink.close()
        if out is not None:
            out.close()
    if out is not None:
        _finish_run_dir(out, ran, cluster, node_id, built.trainer.get_flat(), time.monotonic() - started)
    if not records:
        console.print(f"node {node_id}: finished already: its checkpoint completes all {cfg.rounds} rounds; nothing to do")
        return
    last = records[-1]
    console.print(f"node {node_id}: {len(records)} rounds, final accuracy {last.test_acc:.3f}, dropped {last.dropped}")


RECORD_REFUSED = ("p2pfl node never records what it decrypts: recording for a privacy audit is for "
                  "`p2pfl simulate --record` only, so that no deployment records by accident")


def _open_run_dir(run_dir: str | None, cfg: ExperimentConfig, node_id: int) -> Any:
    """The node's run directory (`record.NodeRunDirectory`), or None without --run-dir."""
    if run_dir is None:
        return None
    from p2pfl.record import NodeRunDirectory

    try:
        return NodeRunDirectory(Path(run_dir), cfg.to_dict(), node_id)
    except OSError as exc:
        raise ConfigError("run_dir", f"{run_dir}: cannot write the run directory ({exc.strerror})") from exc


def _finish_run_dir(out: Any, cfg: ExperimentConfig, cluster: Cluster, node_id: int, model: Any, wall: float) -> None:
    """summary.json and models/node-K.npy of a node's run directory, from every record it holds."""
    from p2pfl import topology
    from p2pfl.record import build_summary, own_peak_rss_mb

    records = out.records()
    if not records:
        return  # restarted after its last round into an empty directory: nothing to summarise
    gap = topology.spectral_gap(topology.metropolis_hastings(cluster.graph))
    summary = build_summary(cfg, topology=cluster.topology_spec, spectral_gap=gap, node_ids=[node_id],
                            records=records, wall_time=wall, processes=1, peak_rss_mb=own_peak_rss_mb())
    out.finish(summary, model)


def _node_setup(config_file: str | None, cluster_file: str, overrides: dict[str, Any]) -> tuple[ExperimentConfig, Cluster]:
    """The experiment and the cluster of `p2pfl node`; ConfigError if they disagree.

    The cluster file lists every node, so it gives the node count; --nodes or the experiment
    file may repeat it but not contradict it.
    """
    size = len(Cluster.load(cluster_file).nodes)  # how many entries does not depend on the seed
    cfg = _config(config_file, defaults={"nodes": size}, **overrides)
    cluster = Cluster.load(cluster_file, seed=cfg.seed)  # the seed shapes a generated topology
    if cfg.nodes != size:
        given = "--nodes gives" if overrides.get("nodes") is not None else "the experiment file says"
        raise ConfigError("nodes", f"{given} {cfg.nodes} nodes, but the cluster file {cluster_file} has {size} (leave it out: "
                          "node takes the count from the cluster file)")
    return cfg, cluster


@main.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for the key files.")
@click.option("--id", "node_ids", required=True, multiple=True, type=int, help="Node id (repeat for several).")
def keygen(out_dir: str, node_ids: tuple[int, ...]) -> None:
    """Write X25519 key pairs: nodeK.key (mode 0600) and nodeK.pub; print the public keys."""
    from p2pfl.crypto import KeyFileError, write_keypair

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for node_id in node_ids:
        try:
            private_path, public = write_keypair(Path(out_dir), node_id)
        except (KeyFileError, FileExistsError) as exc:
            raise click.UsageError(str(exc)) from exc
        click.echo(f"node {node_id}: private key {private_path}  public_key = \"{public}\"")


@main.group("config")
def config_group() -> None:
    """Describe the experiment settings (generated from p2pfl.config.ExperimentConfig)."""


@config_group.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of an experiment file's settings."""
    click.echo(json.dumps(json_schema(), indent=2))


@config_group.command("reference")
def config_reference() -> None:
    """Print the reference of every setting (Markdown, docs/config-reference.md): TOML defaults, flags, bounds."""
    click.echo(reference_markdown(), nl=False)


@main.group("topology")
def topology_group() -> None:
    """Inspect topologies."""


@topology_group.command("show")
@click.argument("spec")
@click.option("--nodes", "-n", type=int, help="Node count for a generated topology (default 8).")
@click.option("--seed", type=int, default=0, show_default=True)
def topology_show(spec: str, nodes: int | None, seed: int) -> None:
    """Print degrees, diameter and spectral gap of a topology file or generator name."""
    from p2pfl import topology

    try:
        is_file = Path(spec).suffix in topology.FILE_EXTENSIONS or Path(spec).exists()
        g = topology.resolve(spec, nodes if is_file else (nodes or 8), seed)
        topology.validate(g)
    except topology.TopologyError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(topology.describe(g, spec))


def _check_resources(address: str, metrics: str | None, checkpoint_dir: str, node_id: int) -> None:
    """What `p2pfl node` will need on this machine, checked before anything starts."""
    if address.startswith("ipc://"):
        _check_ipc_path(Path(address.removeprefix("ipc://")))
    else:
        _check_port(address)
    if metrics is not None and not Path(metrics).parent.is_dir():
        raise ConfigError("metrics", f"{metrics}: directory {Path(metrics).parent} does not exist")
    if checkpoint_dir:
        _check_checkpoint_dir(Path(checkpoint_dir) / f"node-{node_id}")


def _check_ipc_path(path: Path) -> None:
    """An ipc:// address: its directory must exist and take a new socket file."""
    if not path.parent.is_dir():
        raise ConfigError("address", f"ipc://{path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError("address", f"ipc://{path}: cannot create a socket in {path.parent} (permission denied)")


def _check_port(address: str) -> None:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is fine
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            raise ConfigError("address", f"cannot listen on {host}:{port} ({exc.strerror}): another process "
                              "holds the port, or the address is not one of this machine's") from exc


def _check_checkpoint_dir(target: Path) -> None:
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)  # it will hold the private model
    except OSError as exc:
        raise ConfigError("checkpoint_dir", f"{target.parent}: cannot create {target} ({exc.strerror})") from exc


def _check_graph(cfg: ExperimentConfig) -> None:
    try:
        cfg.graph()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def _stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


if __name__ == "__main__":
    sys.exit(main())
