"""Run options are declared once (``RunConfig``) and agents once (``AGENT_SPECS``): the CLI flags,
help, YAML loading, validation, resume checks, ``ponder agents`` and the runner all read them."""

from __future__ import annotations

import typing

import pytest
import yaml

from ponder.agents import AGENT_SPECS, AgentSpec, build_retry, register_agent, unregister_agent
from ponder.cli import _flag_for, build_parser, main
from ponder.config import RunConfig, option_meta
from ponder.errors import ConfigError

#: a non-default value per option, valid for the agent "search" (the one that reads most)
SAMPLE: dict[str, typing.Any] = {
    "agent": "search",
    "env": "math",
    "env_kwargs": {"level": 2},
    "feedback": "full",
    "tasks": 7,
    "trials": 2,
    "concurrency": 3,
    "seed": 5,
    "policy": "scripted",
    "model": "m",
    "base_url": "http://x/v1",
    "device": "cpu",
    "dtype": "float32",
    "temperature": 0.5,
    "max_tokens": 64,
    "name": "n1",
    "runs_dir": "elsewhere",
    "memory": "mem",
    "embedder": "hashing",
    "script": ("Answer: 1", "Answer: 2"),
    "algorithm": "best_of_n",
    "n": 4,
    "prm": "verifier",
    "search_tokens": 100,
    "search_options": {"beam_width": 2},
    "step_tokens": 32,
    "max_steps": 3,
}


def _argv(values: dict[str, typing.Any]) -> list[str]:
    argv = ["run"]
    for name, value in values.items():
        flag, kw = _flag_for(name, RunConfig.model_fields[name])
        assert flag is not None, name
        if kw.get("action") == "store_true":
            argv.append(flag)
        elif isinstance(value, dict):
            argv += [x for k, v in value.items() for x in (flag, f"{k}={v}")]
        elif isinstance(value, tuple):
            argv += [x for v in value for x in (flag, v)]
        else:
            argv += [flag, str(value)]
    return argv


def test_every_option_has_help_and_a_flag_or_says_why_not():
    help_text = build_parser().parse_args(["run"])  # parses with no flags at all
    assert help_text.agent is None
    for name, info in RunConfig.model_fields.items():
        assert info.description, f"{name} has no help text"
        flag, _ = _flag_for(name, info)
        assert flag is not None or name == "run_id", f"{name} has no CLI flag"


def test_flags_and_yaml_give_the_same_config(tmp_path):
    from ponder.cli import _config_from_args

    from_flags = _config_from_args(build_parser().parse_args(_argv(SAMPLE)))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in SAMPLE.items()}))  # fmt: skip
    assert from_flags == RunConfig.from_yaml(tmp_path / "c.yaml") == RunConfig(**SAMPLE)
    # a flag overrides the file; KEY=VALUE flags merge into the file's mapping
    args = build_parser().parse_args(["run", "--config", str(tmp_path / "c.yaml"), "--tasks", "9",
                                      "--env-arg", "num_tasks=3"])  # fmt: skip
    cfg = _config_from_args(args)
    assert cfg.tasks == 9 and cfg.env_kwargs == {"level": 2, "num_tasks": 3}


def test_the_options_a_resume_must_keep_come_from_the_declarations():
    defining = RunConfig.defining()
    assert "tasks" in defining and "prm" in defining and "search_options" in defining
    assert not {"concurrency", "name", "runs_dir", "device", "dtype", "resume", "run_id"} & set(defining)
    assert all(option_meta(RunConfig.model_fields[k])["defining"] for k in defining)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"agent": "debate", "memory_modes": "experiential"}, "memory_modes applies to reflexion"),
        ({"agent": "reflexion", "rounds": 3}, "rounds applies to debate, team, not 'reflexion'"),
        ({"agent": "retry", "env_steps": 5}, "env_steps applies to embodied"),
        ({"agent": "search", "actor_search": "beam"}, "use --agent search --algorithm NAME"),
        ({"agent": "debate", "topology": "mesh"}, "topology applies to team, not 'debate'"),
        ({"tasks": 10**9}, "tasks must be <= 100,000"),
        ({"seed": 1.5}, "seed must be an int, got 1.5"),
        ({"env_kwargs": [1]}, "env_kwargs must be a mapping"),
        ({"agnet": "retry"}, "unknown config key 'agnet'"),
    ],
)
def test_an_option_for_another_agent_or_of_the_wrong_kind_is_refused(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        RunConfig(**kw)


def test_agents_options_and_memory_come_from_their_specs(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["agents"]) == 0
    out = capsys.readouterr().out
    for name, spec in AGENT_SPECS.items():
        assert name in out and spec.description[:30] in out
    assert "--search-arg" in out and "--env-steps" in out  # options shown as the flags that set them
    for spec in AGENT_SPECS.values():
        for o in spec.options:
            assert o in RunConfig.model_fields, (spec.name, o)


def test_a_registered_agent_runs_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    register_agent(AgentSpec("my-retry", build_retry, "retry, registered by a user", ("agent_tests",)))
    try:
        with pytest.raises(ConfigError, match="already registered"):
            register_agent(AgentSpec("my-retry", build_retry, "again"))
        with pytest.raises(ConfigError, match="unknown run options"):
            register_agent(AgentSpec("bad", build_retry, "x", ("no_such_option",)))
        code = main(["run", "--agent", "my-retry", "--policy", "scripted", "--script", "Answer: 13",
                     "--tasks", "1", "--trials", "1", "--no-progress"])  # fmt: skip
        assert code == 0
        assert (tmp_path / "runs" / "my-retry-math" / "episodes.jsonl").is_file()
        with pytest.raises(ConfigError, match="rounds applies to debate, team, not 'my-retry'"):
            RunConfig(agent="my-retry", rounds=4)
    finally:
        unregister_agent("my-retry")
    assert main(["run", "--agent", "my-retry", "--policy", "scripted", "--script", "x", "--no-progress"]) == 2
    assert "unknown agent 'my-retry'" in capsys.readouterr().err


def test_the_options_page_is_what_the_code_declares():
    from pathlib import Path

    from ponder.options_doc import markdown

    page = Path(__file__).resolve().parents[2] / "docs" / "run-options.md"
    assert page.read_text() == markdown(), "regenerate: python -m ponder.options_doc > docs/run-options.md"
