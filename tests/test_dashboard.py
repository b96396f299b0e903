"""The dashboard's server and reader without a browser: a real uvicorn server on loopback, real HTTP.

Read-only (no method but GET/HEAD, files untouched), the Host check against DNS rebinding, the
Content-Security-Policy, no path from a request reaching the file system, the live event stream,
forgiving reading of missing, partial and corrupt run directories, the self-contained report's
policy and escaping, and the per-link figures in the record schema."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pfl import htmlreport, record
from p2pfl.dashboard.runs import open_runs
from p2pfl.dashboard.server import Dashboard
from tests.helpers.synthetic_run import write_run

HOSTILE = '<img src=x onerror="window.pwned=1">'


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run", nodes=6, rounds=4, drop_every=5)


@pytest.fixture()
def board(run_dir: Path) -> Iterator[Dashboard]:
    server = Dashboard(open_runs([run_dir]), port=0, poll_s=0.05)
    server.start()
    deadline = time.monotonic() + 10
    while not server.server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.server.started, "the dashboard server did not start within 10 s"
    yield server
    server.stop()


def request(board: Dashboard, method: str, path: str, host: str | None = None) -> http.client.HTTPResponse:
    port = board.sock.getsockname()[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host or f"127.0.0.1:{port}"}
    conn.request(method, path, headers=headers)
    resp = conn.getresponse()
    resp.body = resp.read() if method != "GET" or path != "/api/events" else b""  # type: ignore[attr-defined]
    conn.close()
    return resp


def tree_digest(path: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_only_get_and_the_run_directory_is_untouched(board: Dashboard, run_dir: Path) -> None:
    before = tree_digest(run_dir)
    for path in ("/", "/api/runs", "/static/app.js", "/static/vendor/echarts.min.js"):
        assert request(board, "GET", path).status == 200, path
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert request(board, method, path).status == 405, (method, path)
    assert tree_digest(run_dir) == before


def test_a_foreign_host_header_is_refused(board: Dashboard) -> None:
    port = board.sock.getsockname()[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
        resp = request(board, "GET", "/api/runs", host=host)
        assert resp.status == 400, host
        assert b"final_acc" not in resp.body  # type: ignore[attr-defined]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert request(board, "GET", "/api/runs", host=host).status == 200, host


def test_strict_content_security_policy(board: Dashboard) -> None:
    resp = request(board, "GET", "/")
    csp = resp.getheader("Content-Security-Policy")
    assert csp is not None
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no inline script, no eval
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert resp.getheader("X-Content-Type-Options") == "nosniff"
    page = resp.body.decode()  # type: ignore[attr-defined]
    assert re.search(r"<script>", page) is None, "the page must have no inline script"


def test_no_request_path_reaches_the_file_system(board: Dashboard) -> None:
    for path in ("/static/../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/index.html",
                 "/static/vendor/echarts/LICENSE", "/etc/passwd", "/api/run/../../config.json"):
        resp = request(board, "GET", path)
        assert resp.status == 404, path
        assert b"root:" not in resp.body  # type: ignore[attr-defined]


def test_events_push_rows_appended_to_the_run(board: Dashboard, run_dir: Path) -> None:
    port = board.sock.getsockname()[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/events", headers={"Host": f"127.0.0.1:{port}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")

    def next_event() -> tuple[str, dict]:
        event, data = "", ""
        while True:
            line = resp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and event:
                return event, json.loads(data)

    kind, snap = next_event()
    assert kind == "snapshot" and len(snap["rows"]) == 6 * 4 and len(snap["nodes"]) == 6
    assert next_event()[0] == "ready"
    rec = record.read_records(run_dir / record.METRICS_FILE)[-1][0]
    extra = dict(rec.to_json(), round=5, test_acc=0.5)
    extra_line = json.dumps(extra) + "\n"
    with (run_dir / record.METRICS_FILE).open("a") as f:  # a writer's line arrives in two pieces
        f.write(extra_line[:40])
        f.flush()
        time.sleep(0.3)
        f.write(extra_line[40:])
    kind, update = next_event()
    assert kind == "rows"
    fields = snap["fields"]
    assert [dict(zip(fields, row))["round"] for row in update["rows"]] == [5]
    assert dict(zip(fields, update["rows"][0]))["test_acc"] == 0.5
    conn.close()


def test_missing_partial_and_corrupt_directories_become_messages(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    partial = tmp_path / "partial"
    partial.mkdir()
    record.write_config(partial, {"nodes": 3, "rounds": 2, "topology": "ring"})
    corrupt = write_run(tmp_path / "corrupt", nodes=3, rounds=2)
    lines = (corrupt / record.METRICS_FILE).read_text().splitlines()
    lines[2] = lines[2].replace('"test_acc": ', '"test_acc": "high", "x": ')
    (corrupt / record.METRICS_FILE).write_text("\n".join(lines) + "\n")
    bad_summary = write_run(tmp_path / "badsummary", nodes=3, rounds=2)
    (bad_summary / record.SUMMARY_FILE).write_text("{not json")
    runs = {run.name: run for run in open_runs([missing, partial, corrupt, bad_summary])}
    assert any("no such directory" in m for m in runs["nope"].messages)
    assert runs["nope"].status == "unreadable"
    assert any("metrics.jsonl: not written yet" in m for m in runs["partial"].messages)
    assert runs["partial"].status == "running" and runs["partial"].rows == []
    assert len(runs["corrupt"].rows) == 2  # the lines before the bad one
    assert any(":3:" in m and "later lines not shown" in m for m in runs["corrupt"].messages)
    assert any("summary.json" in m and "invalid JSON" in m for m in runs["badsummary"].messages)
    for run in runs.values():
        json.dumps(run.snapshot(), allow_nan=False)  # what the page gets is always valid JSON
        assert not any("Traceback" in m for m in run.messages)


def test_the_report_page_allows_only_its_own_inline_scripts(tmp_path: Path) -> None:
    write_run(tmp_path / "cmp" / HOSTILE.replace("/", "_"), nodes=4, rounds=3)
    # A directory name cannot hold "/", a label can: it must not end the data's script element either.
    write_run(tmp_path / "cmp" / "two", nodes=4, rounds=3, topo="complete", label="</script><script>window.pwned=2</script>")
    page = htmlreport.render([tmp_path / "cmp"])
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert csp is not None
    directives = dict(d.strip().split(" ", 1) for d in csp.group(1).split(";"))
    assert directives["connect-src"] == "'none'" and directives["default-src"] == "'none'"
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    assert len(scripts) == 2  # echarts and the app; nothing else runs
    hashes = {"'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'" for s in scripts}
    assert set(directives["script-src"].split()) == hashes
    markup = re.sub(r"<script>.*?</script>", "<script></script>", page, flags=re.S)  # the page, not the code
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(?!data:)', markup), "nothing is loaded from outside"
    data = re.search(r'<script type="application/json" id="p2pfl-data">(.*?)</script>', page, flags=re.S)
    assert data is not None and "<" not in data.group(1)
    runs = json.loads(data.group(1))["runs"]
    assert [run["name"] for run in runs] == [HOSTILE, "two"]
    assert runs[1]["summary"]["label"] == "</script><script>window.pwned=2</script>"


def test_per_link_figures_are_part_of_the_record_schema(run_dir: Path) -> None:
    rec = record.read_records(run_dir / record.METRICS_FILE)[0][0]
    assert rec.links and all(len(v) == 3 for v in rec.links.values())
    assert sum(v[0] for v in rec.links.values()) == rec.bytes_sent
    old = rec.to_json()
    del old["links"], old["node_distance"]  # written before these fields existed: still readable
    assert record.parse_record(old, run_dir).links is None
    for bad in ({"1": [1, 2]}, {"x": [1, 2, 3]}, {"1": [1, -2, 3]}, [1, 2, 3]):
        with pytest.raises(record.RunDirError, match="field 'links'"):
            record.parse_record(dict(rec.to_json(), links=bad), run_dir, 1)


def test_a_port_in_use_is_one_clear_line(run_dir: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run([str(Path(sys.executable).with_name("p2pfl")), "dashboard", str(run_dir), "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_directories_of_a_multi_host_run_are_one_run(tmp_path: Path) -> None:
    """`p2pfl node --run-dir` on each machine: one directory per node, joined into one run, still being written."""
    full = write_run(tmp_path / "full", nodes=3, rounds=3)
    records = [rec for rec, _ in record.read_records(full / record.METRICS_FILE)]
    config = json.loads((full / record.CONFIG_FILE).read_text())
    shares = []
    for node in range(3):
        share = tmp_path / f"node{node}"
        share.mkdir()
        record.write_config(share, config)
        mine = [rec for rec in records if rec.node == node and rec.round <= 2 + (node == 0)]
        (share / record.METRICS_FILE).write_text("".join(record.record_line(rec) for rec in mine))
        shares.append(share)
    other = write_run(tmp_path / "other", nodes=3, rounds=3, seed=5)  # another experiment: a run of its own
    runs = open_runs([*shares, other])
    assert [run.name for run in runs] == ["node0 + 2 more", "other"]
    joined = runs[0]
    assert joined.paths == shares and joined.status == "running"
    assert sorted((row[1], row[0]) for row in joined.rows) == sorted(
        (rec.node, rec.round) for rec in records if rec.round <= 2 or rec.node == 0)
    assert len(joined.edges) == 3  # from the links the nodes recorded: no topology.json in a node's directory
    with (shares[1] / record.METRICS_FILE).open("a") as f:  # node 1 finishes round 3 on its machine
        f.write(record.record_line(next(r for r in records if (r.node, r.round) == (1, 3))))
    assert joined.refresh() == 1


def test_report_html_beside_the_markdown_and_plots(tmp_path: Path) -> None:
    import subprocess
    import sys

    compare = tmp_path / "compare"
    write_run(compare / "ring", nodes=4, rounds=3)
    write_run(compare / "complete", nodes=4, rounds=3, topo="complete")
    proc = subprocess.run([str(Path(sys.executable).with_name("p2pfl")), "report", str(compare), "--html"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {p.name for p in compare.iterdir() if p.is_file()}
    assert {"comparison.md", "comparison.csv", "accuracy_vs_round.png", "report.html"} <= names
    page = (compare / "report.html").read_text()
    data = json.loads(re.search(r'id="p2pfl-data">(.*?)</script>', page, flags=re.S).group(1))  # type: ignore[union-attr]
    assert [run["name"] for run in data["runs"]] == ["complete", "ring"]
    assert all(len(run["rows"]) == 4 * 3 for run in data["runs"])
