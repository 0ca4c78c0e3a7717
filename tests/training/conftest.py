"""Shared pieces of the training tests: a tiny random Llama with SmolLM2's tokenizer and chat
template, and single-threaded torch."""

from __future__ import annotations

import shutil

import pytest
import torch


def tiny_llama(root, hidden: int = 32, seed: int = 0):
    """A 2-layer random Llama (tied embeddings, like SmolLM2) with SmolLM2's tokenizer files
    and chat template in ``root``; nothing is downloaded."""
    import transformers

    from ponder.models.resolver import default_model_path

    src = default_model_path()
    root.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
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
        tie_word_embeddings=True,
        pad_token_id=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The folder of a tiny random Llama (see ``tiny_llama``), made once per session."""
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread; a busy 2-core CPU makes two threads far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
