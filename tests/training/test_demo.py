"""``ponder demo`` runs the three agents with the base model and with an improved one (an
adapter folder here, the packaged ``smollm2-math`` by default) into one comparison."""

from __future__ import annotations

import pytest

from ponder.cli import main
from ponder.training import ChatExample
from ponder.training.sft import SFTConfig, train_sft

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_compares_the_base_model_with_the_improved_one(tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.setenv("PONDER_CACHE", str(tmp_path / "cache"))
    examples = [ChatExample([{"role": "user", "content": f"What is {i} + 1?"},
                             {"role": "assistant", "content": f"Answer: {i + 1}"}]) for i in range(4)]  # fmt: skip
    lora = train_sft(examples, SFTConfig(out=tmp_path / "lora", model=str(tiny_model), method="lora",
                                         max_steps=2, save_every=0), progress=False)  # fmt: skip
    runs = tmp_path / "runs"
    args = ["demo", "--model", str(tiny_model), "--improved", str(lora.adapter), "--tasks", "2", "--trials", "1",
            "--runs-dir", str(runs), "--no-progress", "--concurrency", "2"]  # fmt: skip
    assert main(args) == 0
    names = {p.name for p in runs.iterdir()}
    for agent in ("reflexion", "retry-feedback", "retry"):
        assert {f"demo-{agent}-binary", f"demo-improved-{agent}-binary"} <= names
    report = (runs / "demo-compare" / "report.md").read_text()
    assert "demo-improved-reflexion-binary" in report and "demo-retry-binary" in report
    assert "demo wall time" in capsys.readouterr().out
    assert main([*args[:4], "none", *args[5:]]) == 0  # --improved none: the base model only, resumed


@pytest.mark.real_model
def test_the_packaged_adapter_loads_by_name_and_changes_the_model():
    import torch
    from safetensors.torch import load_file

    from ponder.models.resolver import IMPROVED_ADAPTER, default_model_path, resolve_model

    weights = IMPROVED_ADAPTER / "adapter_model.safetensors"
    assert weights.stat().st_size < 10_000_000  # small enough to ship
    merged = resolve_model("smollm2-math")
    assert merged != default_model_path() and (merged / "config.json").is_file()
    assert resolve_model("smollm2-math") == merged  # merged once, then cached
    base, tuned = (
        load_file(default_model_path() / "model.safetensors"),
        load_file(merged / "model.safetensors"),
    )
    name = next(k for k in tuned if "q_proj" in k)
    assert not torch.equal(base[name], tuned[name]) and torch.equal(
        base["model.embed_tokens.weight"], tuned["model.embed_tokens.weight"]
    )  # LoRA touched the projections, not the embeddings
