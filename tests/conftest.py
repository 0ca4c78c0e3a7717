"""Shared pieces of the model and training tests: a tiny random Llama folder and single-threaded torch."""

from __future__ import annotations

import shutil

import pytest


def tiny_llama(root, hidden: int = 32, seed: int = 0, *, chat_template: bool = False, tied: bool = False):
    """A 2-layer random Llama with SmolLM2's tokenizer files in ``root`` (a local folder, nothing
    downloaded); ``chat_template`` also copies SmolLM2's chat template, ``tied`` ties the
    embeddings (as SmolLM2 does)."""
    import torch
    import transformers

    from ponder.models.resolver import default_model_path

    src = default_model_path()
    root.mkdir(parents=True, exist_ok=True)
    names = ("tokenizer.json", "tokenizer_config.json") + (("chat_template.jinja",) if chat_template else ())
    for name in names:
        shutil.copy(src / name, root / name)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        pad_token_id=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def make_tiny_llama():
    """``make_tiny_llama(root, hidden=32, seed=0) -> root``: see ``tiny_llama``."""
    return tiny_llama


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread; a busy 2-core CPU makes two threads far slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
