"""`p2pfl report --html`: the dashboard's page as one self-contained file, for mail or a paper's artifact.

Owns writing report.html: the dashboard's page (`p2pfl/dashboard/static`) with its style, its
script, the vendored Apache ECharts and the runs' data (the same snapshot the live server sends)
inlined, under a Content-Security-Policy that allows exactly those inline scripts (by hash) and
no connection at all, so the file works from file:// with the network off and cannot be made to
fetch anything. The data is a JSON block that is never executed (every "<" escaped, so no run
name can close the script element). The PNG and Markdown outputs are `report`'s.

Must not run anything or import torch or zmq; reads run directories only through `dashboard.runs`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from p2pfl.dashboard.runs import open_runs
from p2pfl.dashboard.server import static_text

REPORT_FILE = "report.html"


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def _script_safe(text: str, what: str) -> str:
    if "</script" in text.lower() or "<!--" in text:
        raise ValueError(f"{what} holds '</script' or '<!--': it cannot be inlined as it is")
    return text


def render(run_dirs: Sequence[str | os.PathLike[str]], written: str | None = None) -> str:
    """The page, as text, for the runs of `run_dirs` (as `p2pfl dashboard` would show them)."""
    runs = open_runs(list(run_dirs))
    data: dict[str, Any] = {"written": written or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                            "runs": [run.snapshot() for run in runs]}
    # "<" as \u003c: the JSON cannot end its script element (a run named "</script><script>...").
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    css = static_text("app.css")
    charts = _script_safe(static_text("vendor/echarts/echarts.min.js"), "echarts.min.js")
    app = _script_safe(static_text("app.js"), "app.js")
    csp = (f"default-src 'none'; script-src {_sha256(charts)} {_sha256(app)}; style-src {_sha256(css)}; "
           "img-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'")
    page = static_text("index.html")
    replacements = {
        '<meta charset="utf-8">': f'<meta charset="utf-8">\n<meta http-equiv="Content-Security-Policy" content="{csp}">',
        "<title>p2pfl dashboard</title>": "<title>p2pfl report</title>",
        '<link rel="stylesheet" href="static/app.css">': f"<style>{css}</style>",
        '<script src="static/vendor/echarts.min.js"></script>': f"<script>{charts}</script>",
        '<script src="static/app.js"></script>':
            f'<script type="application/json" id="p2pfl-data">{blob}</script>\n<script>{app}</script>',
    }
    for old, new in replacements.items():
        if page.count(old) != 1:
            raise ValueError(f"index.html: expected {old!r} once")
        page = page.replace(old, new)
    return page


def write(run_dirs: Sequence[str | os.PathLike[str]], path: str | os.PathLike[str]) -> Path:
    """Write the self-contained report page of `run_dirs` to `path`; returns it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(run_dirs), encoding="utf-8")
    os.replace(tmp, out)
    return out
