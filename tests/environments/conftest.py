"""Shared pieces of the environment tests."""

import os

import pytest


def _procs_with(marker: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


@pytest.fixture
def procs_with():
    """``procs_with(marker) -> [pid, ...]``: live processes whose command line holds ``marker``."""
    return _procs_with
