"""The real parts end to end: SmolLM2 (converted from the packaged GGUF), MiniLM, Chroma, SqliteSaver."""

import json

import pytest

from ponder.cli import main
from ponder.config import RunConfig
from ponder.models import ScriptedPolicy
from ponder.runner import run

pytestmark = pytest.mark.real_model


def test_reflexion_with_smollm2_and_minilm(tmp_path, capsys):
    rc = main(
        [
            "run",
            "--agent",
            "reflexion",
            "--env",
            "math",
            "--env-arg",
            "level=2",
            "--tasks",
            "2",
            "--trials",
            "2",
            "--concurrency",
            "2",
            "--runs-dir",
            str(tmp_path),
            "--name",
            "real",
            "--no-progress",
        ]
    )
    assert rc == 0
    d = tmp_path / "real"
    eps = [json.loads(x) for x in (d / "episodes.jsonl").read_text().splitlines()]
    assert len(eps) == 2 and all(e["model"] == "smollm2-135m-instruct" for e in eps)
    assert all(e["completion_tokens"] > 0 and e["trials"] for e in eps)
    failed = sum(not t["success"] for e in eps for t in e["trials"][:-1])
    # every failed non-final trial was reflected on, and the reflection is in Chroma
    capsys.readouterr()
    assert main(["memory", "stats", "--memory", str(d), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["by_kind"]["reflection"] == failed
    assert stats["embedder"].startswith("ponder-minilm")
    assert (d / "success_by_trial.png").stat().st_size > 1000


def test_shared_memory_recalls_reflections_across_runs(tmp_path):
    shared = str(tmp_path / "shared-memory")
    seen = []

    def policy_fn(prompt):
        seen.append("\n".join(m.content for m in prompt.messages))
        return (
            "The sum was off by one; count again."
            if "Diagnose" in prompt.messages[0].content
            else "Answer: 0"
        )

    cfg = RunConfig(
        agent="reflexion",
        tasks=1,
        trials=2,
        policy="scripted",
        script=("x",),
        runs_dir=str(tmp_path),
        memory=shared,
        embedder="minilm",
        memory_modes=("reflective",),
    )
    run(cfg.replace(name="first"), policy=ScriptedPolicy(policy_fn), progress=False)
    assert not any("off by one" in s for s in seen[:1])
    seen.clear()
    run(cfg.replace(name="second"), policy=ScriptedPolicy(policy_fn), progress=False)
    # the first attempt of the second run already sees the first run's reflection, quoted as data
    assert "> The sum was off by one; count again." in seen[0]
