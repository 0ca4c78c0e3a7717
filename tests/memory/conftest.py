import pytest

from ponder.memory import MemoryStore


@pytest.fixture
def store(tmp_path):
    """A fresh store with the deterministic hashing embedder (no model to load)."""
    s = MemoryStore.open(tmp_path / "mem", embedder="hashing")
    yield s
    s.close()
