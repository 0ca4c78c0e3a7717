"""Shared pieces of the training tests: a tiny random Llama with SmolLM2's tokenizer and chat
template, made once per session (``tiny_llama`` and ``one_thread`` are in ``tests/conftest.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, make_tiny_llama):
    """The folder of a tiny random Llama with tied embeddings and a chat template, as SmolLM2 has."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", chat_template=True, tied=True)
