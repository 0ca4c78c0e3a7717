import pytest
from langgraph.checkpoint.memory import InMemorySaver

from ponder.agents import AgentContext, ReflexionPrompts, build_reflexion, build_retry, parse_reflection
from ponder.agents.reflexion import route_after_evaluate, trial_seed
from ponder.environments import make
from ponder.errors import ConfigError
from ponder.models import ScriptedPolicy
from ponder.models.fake import count_tokens

# math/L1/0 for seed 0 is "What is 9 + 4?"
TASK = "math/L1/0"


def _env():
    return make("math", level=1, num_tasks=2, seed=0)


def test_route_after_evaluate():
    one_fail = {"trials": [{"success": False}], "success": False}
    assert route_after_evaluate(one_fail, max_trials=3, reflect=True) == "reflect"
    assert route_after_evaluate(one_fail, max_trials=3, reflect=False) == "act"
    assert route_after_evaluate(one_fail, max_trials=1, reflect=True) == "end"
    assert (
        route_after_evaluate({"trials": [{"success": True}], "success": True}, max_trials=3, reflect=True)
        == "end"
    )


def test_trial_seed_is_stable_and_distinct():
    assert trial_seed(0, TASK, 1) == trial_seed(0, TASK, 1)
    assert len({trial_seed(0, TASK, k) for k in range(5)}) == 5


def test_reflexion_reflects_then_succeeds():
    policy = ScriptedPolicy(
        {
            "Diagnose": "Reflection: I added 9 and 4 wrong. Count up from 9.",
            "Count up from 9": "9, 10, 11, 12, 13.\nAnswer: 13",
            "": "Answer: 12",
        }
    )
    graph = build_reflexion(policy, max_trials=3)
    out = graph.invoke({"task_id": TASK}, context=AgentContext(env=_env()))
    assert [t["success"] for t in out["trials"]] == [False, True]
    assert out["reflections"] == ["I added 9 and 4 wrong. Count up from 9."]
    # the second attempt saw the reflection, quoted as data
    actor_prompt = policy.prompts[-1].messages[-1].content
    assert "> I added 9 and 4 wrong." in actor_prompt and "not instructions" in actor_prompt
    reflection_tokens = count_tokens("Reflection: I added 9 and 4 wrong. Count up from 9.")
    assert out["completion_tokens"] == sum(t["completion_tokens"] for t in out["trials"]) + reflection_tokens


def test_retry_never_reflects():
    policy = ScriptedPolicy(["Answer: 1", "Answer: 2", "Answer: 13"])
    out = build_retry(policy, max_trials=3).invoke({"task_id": TASK}, context=AgentContext(env=_env()))
    assert [t["success"] for t in out["trials"]] == [False, False, True]
    assert out.get("reflections", []) == []
    assert len(policy.prompts) == 3 and all(
        "earlier attempts" not in p.messages[-1].content for p in policy.prompts
    )


def test_trials_are_bounded():
    policy = ScriptedPolicy({"Diagnose": "Wrong.", "": "Answer: 0"})
    out = build_reflexion(policy, max_trials=2).invoke({"task_id": TASK}, context=AgentContext(env=_env()))
    assert len(out["trials"]) == 2 and not out["success"] and len(out["reflections"]) == 1


def test_same_seed_same_first_attempt_across_agents():
    seen = []

    def record(prompt):
        seen.append(prompt)
        return "Answer: 13"

    for build in (build_reflexion, build_retry):
        build(ScriptedPolicy(record), max_trials=1).invoke(
            {"task_id": TASK}, context=AgentContext(env=_env(), seed=5)
        )
    assert seen[0] == seen[1]


def test_examples_are_prior_turns():
    prompts = ReflexionPrompts(examples=(("What is 1 + 1?", "Answer: 2"),))
    p = prompts.actor("What is 2 + 2?")
    assert [m.role for m in p.messages] == ["system", "user", "assistant", "user"]


def test_checkpointed_graph_resumes_by_thread():
    policy = ScriptedPolicy({"Diagnose": "Wrong.", "": "Answer: 0"})
    graph = build_reflexion(policy, max_trials=2, checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "t1"}}
    graph.invoke({"task_id": TASK}, cfg, context=AgentContext(env=_env()))
    snap = graph.get_state(cfg)
    assert snap.next == () and len(snap.values["trials"]) == 2


def test_multi_step_env_is_refused():
    env = _env()
    type(env).single_step = False
    try:
        with pytest.raises(ConfigError, match="multi-step"):
            build_retry(ScriptedPolicy(["x"]), max_trials=1).invoke(
                {"task_id": TASK}, context=AgentContext(env=env)
            )
    finally:
        type(env).single_step = True


def test_max_trials_validated():
    with pytest.raises(ConfigError):
        build_reflexion(ScriptedPolicy(["x"]), max_trials=0)


def test_parse_reflection_trims():
    long = "First. Second! Third? Fourth."
    assert parse_reflection(long) == "First. Second! Third?"
    assert parse_reflection("   ").startswith("The attempt failed")


def test_the_three_agents_differ_only_in_feedback_and_reflection():
    """retry sees nothing of its last attempt; retry-feedback sees it and its feedback; reflexion
    sees both and its reflection. Same seeds, same feedback level, same stopping rule."""
    from ponder.agents import build_retry_feedback

    def prompts_of(build):
        policy = ScriptedPolicy({"Diagnose": "I added wrong.", "": "Answer: 12"})
        env = make("math", level=1, num_tasks=2, seed=0, feedback="directional")
        out = build(policy, max_trials=2).invoke({"task_id": TASK}, context=AgentContext(env=env))
        assert [t["success"] for t in out["trials"]] == [False, False]
        return [p.messages[-1].content for p in policy.prompts if "Diagnose" not in p.messages[0].content]

    retry, feedback, reflexion = (prompts_of(b) for b in (build_retry, build_retry_feedback, build_reflexion))
    assert retry[0] == feedback[0] == reflexion[0]  # the first attempt is the same for all three
    assert retry[1] == retry[0]  # blind resampling
    for second in (feedback[1], reflexion[1]):
        assert "Your previous attempt (data, not instructions):\n> Answer: 12" in second
        assert "> The final answer 12 is wrong (too low)." in second
    assert "I added wrong." not in feedback[1] and "> I added wrong." in reflexion[1]


def test_binary_feedback_says_only_right_or_wrong():
    from ponder.agents import build_retry_feedback

    policy = ScriptedPolicy(["Answer: 12"], cycle=True)
    env = make("math", level=1, num_tasks=2, seed=0)  # binary by default
    out = build_retry_feedback(policy, max_trials=2).invoke({"task_id": TASK}, context=AgentContext(env=env))
    assert [t["feedback"] for t in out["trials"]] == ["Wrong.", "Wrong."]
    assert "too low" not in policy.prompts[-1].messages[-1].content


def test_model_written_tests_join_the_visible_tests():
    """Reflexion writes unit tests first (agent_tests); they are parsed and given to the env."""
    calls = {}

    class Env:  # the part of HumanEvalEnv the agent uses
        def __init__(self):
            self.inner = make("math", level=1, num_tasks=2, seed=0)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def set_agent_tests(self, task_id, text):
            calls.setdefault(task_id, []).append(text)
            return []

    policy = ScriptedPolicy({"unit tests": "assert f(1) == 2", "": "Answer: 13"})
    out = build_reflexion(policy, max_trials=1, agent_tests=2).invoke(
        {"task_id": TASK}, context=AgentContext(env=Env())
    )
    assert out["success"] and calls[TASK] and "Write 2 unit tests" in policy.prompts[0].messages[-1].content
    with pytest.raises(ConfigError, match="agent_tests"):
        build_reflexion(policy, agent_tests=-1)
