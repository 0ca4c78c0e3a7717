"""HumanEval's hidden tests grade the final answer and nothing else: no prompt, feedback string,
episode log or memory record an agent reads ever holds their text, whatever the agent."""

import json
import re

import pytest

from ponder.config import RunConfig
from ponder.environments.humaneval import load_problems
from ponder.environments.sandbox import namespaces_available
from ponder.memory import MemoryStore
from ponder.models import ScriptedPolicy
from ponder.runner import run

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(not namespaces_available(), reason="HumanEval grades in the namespace sandbox"),
]
TASKS = 4  # HumanEval/0..3


def _hidden_only(problem: dict) -> list[str]:
    """Argument lists of hidden-test calls that the prompt (the visible part) does not show."""
    found = re.findall(r"candidate\((.*?)\)\s*(?:==|<|>|,|\))", problem["test"])
    return sorted({a for a in found if a.strip() and a not in problem["prompt"]})


def _reply(prompt) -> str:
    text = prompt.messages[-1].content
    if "unit tests" in text:
        return "assert below_zero([1, 2]) == False\nassert truncate_number(1.5) == 0.5"
    if "Diagnose" in prompt.messages[0].content or "review a failed attempt" in prompt.messages[0].content:
        return "The code returned a constant. Next time compute the value."
    return "```python\n    return 0\n```"


CASES = {
    "reflexion": {"agent_tests": 2, "memory_modes": ("experiential", "reflective", "concept")},
    "retry-feedback": {},
    "retry": {},
    "search": {"algorithm": "majority", "n": 3, "trials": 1},
    # LATS decides by the env's verdict: on HumanEval the visible tests, so it is no oracle
    "search-lats": {
        "agent": "search",
        "algorithm": "lats",
        "n": 2,
        "trials": 1,
        "search_options": {"iterations": 2},
    },
    "search-verifier": {"agent": "search", "algorithm": "best_of_n", "prm": "verifier", "n": 2, "trials": 1},
    "debate": {"agents": 2, "rounds": 2, "trials": 1},
    "team": {"topology": "star", "agents": 2},
}


@pytest.mark.parametrize("case", list(CASES))
def test_no_hidden_test_text_reaches_what_an_agent_reads(tmp_path, case):
    agent = CASES[case].get("agent", case)
    problems = load_problems()
    ids = list(problems)[:TASKS]
    hidden = {tid: _hidden_only(problems[tid]) for tid in ids}
    assert all(hidden.values())  # every task has hidden calls the prompt does not show
    policy = ScriptedPolicy(_reply)
    opts = {"trials": 2, **{k: v for k, v in CASES[case].items() if k != "agent"}}
    cfg = RunConfig(agent=agent, env="humaneval", tasks=TASKS, feedback="full", policy="scripted",
                    script=("unused",), runs_dir=str(tmp_path), name="r", embedder="hashing", **opts)  # fmt: skip
    result = run(cfg, policy=policy, progress=False)
    assert len(result.episodes) == TASKS
    seen = [json.dumps([m.content for m in p.messages] + [p.assistant_prefix]) for p in policy.prompts]
    seen.append((tmp_path / "r" / "episodes.jsonl").read_text())  # feedback strings and the log
    with MemoryStore.open(tmp_path / "r" / "memory", mode="r") as store:
        seen += [json.dumps(r.to_dict()) for r in store.list()]
    text = "\n".join(seen)
    assert "def check(candidate)" not in text and "METADATA" not in text
    for tid in ids:
        entry = problems[tid]["entry_point"]
        for args in hidden[tid]:
            for call in (f"candidate({args})", f"{entry}({args})"):
                assert call not in text and json.dumps(call)[1:-1] not in text, (agent, tid, call)
    # the hidden verdict is recorded for the report, apart from what the agent saw
    for e in result.episodes:
        assert "internal_success" in e and all("hidden_success" in t for t in e["trials"])
        assert e["oracle"] is False  # the visible tests are what any agent may use
