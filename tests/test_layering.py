"""The layering table of docs/architecture.md holds in the code: import-linter's contracts pass.

The contracts live in pyproject.toml (`[tool.importlinter]`): data flows one way from the CLI
down to the round protocols; round logic (protocols, secure aggregation, strategies, the
cross-round window, sessions) imports no sockets and no torch; the transport stack knows bytes
and keys, not rounds or models; configuration and the run record start nothing. A new import
that breaks one fails here, naming the import chain.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "lint-imports is missing: install the dev extras (pip install -e '.[dev]')"
    return exe


def test_the_architecture_contracts_hold() -> None:
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "broken" in proc.stdout, proc.stdout[-2000:]


def test_a_broken_contract_is_caught(tmp_path: Path) -> None:
    """The check can fail: a contract the code breaks (node imports torch, via training) is reported."""
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_package = "p2pfl"\ninclude_external_packages = true\n\n'
                      '[[tool.importlinter.contracts]]\nname = "node without torch"\ntype = "forbidden"\n'
                      'source_modules = ["p2pfl.node"]\nforbidden_modules = ["torch"]\n')
    proc = subprocess.run([_lint_imports(), "--no-cache", "--config", str(config)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "1 broken" in proc.stdout, proc.stdout[-2000:]
