import asyncio

import pytest

from ponder.errors import ConfigError
from ponder.models import Completion, Policy, Prompt, SamplingParams, ScriptedPolicy
from ponder.models.types import apply_stop


def test_prompt_builders():
    p = Prompt.user("q", system="s", prefix="Step 1:")
    assert [m.role for m in p.messages] == ["system", "user"]
    assert p.to_messages()[1] == {"role": "user", "content": "q"}
    assert Prompt.chat([{"role": "user", "content": "x"}]).messages[0].content == "x"
    with pytest.raises(ConfigError):
        Prompt(())
    with pytest.raises(ConfigError):
        Prompt.chat([{"role": "robot", "content": "x"}])


@pytest.mark.parametrize(
    "kw", [{"n": 0}, {"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"stop": ("",)}]
)
def test_sampling_params_validate(kw):
    with pytest.raises(ConfigError):
        SamplingParams(**kw)


def test_stop_accepts_a_string():
    assert SamplingParams(stop="\n").stop == ("\n",)
    assert apply_stop("ab\ncd", ["\n"]) == ("ab", True)
    assert apply_stop("abcd", ["x"]) == ("abcd", False)


def test_scripted_policy_list_dict_fn():
    seq = ScriptedPolicy(["a", "b"])
    out = seq.generate([Prompt.user("1"), Prompt.user("2")], SamplingParams())
    assert [r[0].text for r in out] == ["a", "b"]
    with pytest.raises(ConfigError, match="ran out"):
        seq.generate([Prompt.user("3")])
    rules = ScriptedPolicy({"France": "Paris", "": "?"})
    assert rules.generate([Prompt.user("capital of France")])[0][0].text == "Paris"
    assert rules.generate([Prompt.user("capital of Peru")])[0][0].text == "?"
    fn = ScriptedPolicy(lambda p: p.messages[-1].content.upper())
    assert fn.generate([Prompt.user("hey")])[0][0].text == "HEY"
    assert isinstance(fn, Policy)


def test_scripted_policy_keeps_the_contract():
    p = ScriptedPolicy(["one two three four\n\nfive"], cycle=True)
    row = p.generate([Prompt.user("x")], SamplingParams(n=3, stop=("\n\n",)))[0]
    assert len(row) == 3 and all(c.text == "one two three four" and c.finish_reason == "stop" for c in row)
    c = p.generate([Prompt.user("x")], SamplingParams(max_tokens=2))[0][0]
    assert c.finish_reason == "length" and c.completion_tokens == 2 and c.text == "one two"
    assert p.usage.calls == 2 and p.usage.completion_tokens == 3 * 4 + 2
    assert isinstance(row[0], Completion)


def test_generate_rejects_a_bare_prompt():
    with pytest.raises(ConfigError, match="list of Prompt"):
        ScriptedPolicy(["a"]).generate(Prompt.user("x"))


def test_async_twin():
    p = ScriptedPolicy(["a"], cycle=True)
    out = asyncio.run(p.agenerate([Prompt.user("x")], SamplingParams(n=2)))
    assert [c.text for c in out[0]] == ["a", "a"]
