"""Test-session settings shared by every test module."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_data_cache(tmp_path_factory: pytest.TempPathFactory):
    """Generated and cached datasets (`p2pfl.datacache`) go to a directory of this session, not the
    user's ~/.cache/p2pfl: tests neither read what an earlier run left nor leave anything behind.
    Subprocesses (p2pfl node, simulate) inherit it through the environment. A test that sets its
    own P2PFL_CACHE (monkeypatch) still wins."""
    old = os.environ.get("P2PFL_CACHE")
    os.environ["P2PFL_CACHE"] = str(tmp_path_factory.mktemp("p2pfl-cache"))
    yield
    if old is None:
        os.environ.pop("P2PFL_CACHE", None)
    else:
        os.environ["P2PFL_CACHE"] = old
