import json

import pytest

from ponder.config import RunConfig
from ponder.episodes import EpisodeLog
from ponder.errors import ConfigError


def test_config_round_trip(tmp_path):
    cfg = RunConfig(agent="retry", env_kwargs={"level": 2}, tasks=3, name="x", runs_dir=str(tmp_path))
    cfg.save(tmp_path / "c.yaml")
    assert RunConfig.from_yaml(tmp_path / "c.yaml") == cfg
    assert cfg.run_dir == tmp_path / "x" and cfg.memory_dir == tmp_path / "x" / "memory"


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"tasks": 0}, "tasks must be >= 1"),
        ({"policy": "gpt"}, "policy must be"),
        ({"policy": "scripted"}, "--script"),
        ({"name": "../x"}, "plain directory name"),
        ({"temperature": -0.1}, "temperature"),
    ],
)
def test_config_errors_say_the_fix(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        RunConfig(**kw)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_yaml(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("agent: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "unk.yaml").write_text("agnet: retry\n")
    with pytest.raises(ConfigError, match="unknown config keys \\['agnet'\\]"):
        RunConfig.from_yaml(tmp_path / "unk.yaml")


def test_episode_log_is_idempotent_and_survives_reopen(tmp_path):
    path = tmp_path / "episodes.jsonl"
    log = EpisodeLog(path)
    assert log.append({"episode_id": "a", "v": 1})
    assert not log.append({"episode_id": "a", "v": 2})
    assert log.append({"episode_id": "b", "v": 3})
    again = EpisodeLog(path)
    assert "a" in again and len(again) == 2
    assert [e["v"] for e in again.read()] == [1, 3]


def test_episode_log_sets_a_torn_line_aside(tmp_path):
    path = tmp_path / "episodes.jsonl"
    path.write_text(json.dumps({"episode_id": "a"}) + "\n" + '{"episode_id": "b", "tru')
    log = EpisodeLog(path)
    assert len(log) == 1 and path.read_text().endswith("\n")
    assert '{"episode_id": "b", "tru' in (tmp_path / "episodes.torn").read_text()


@pytest.mark.parametrize("keep_newline", [True, False])
def test_a_line_cut_in_the_middle_of_the_log_is_set_aside_and_rerun_once(tmp_path, keep_newline):
    from ponder.run_check import check_run
    from ponder.runner import run

    cfg = RunConfig(agent="retry", tasks=4, trials=1, policy="scripted", script=("Answer: 1",),
                    runs_dir=str(tmp_path), name="r", embedder="hashing")  # fmt: skip
    run(cfg, progress=False)
    log = tmp_path / "r" / "episodes.jsonl"
    lines = log.read_text().splitlines(True)
    cut = lines[1][: len(lines[1]) // 2] + ("\n" if keep_newline else "")  # else it runs into line 3
    log.write_text("".join([lines[0], cut, *lines[2:]]))
    result = run(cfg.replace(resume=True), progress=False)
    ids = [json.loads(x)["episode_id"] for x in log.read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 4 == len(result.episodes)
    assert check_run(tmp_path / "r") == []
    torn = (tmp_path / "r" / "episodes.torn").read_text()
    assert "not a whole JSON line" in torn and cut.strip() in torn
    # and the report of such a log (before a resume repairs it) reads it, episodes once each
    from ponder.report import load_run

    log.write_text("".join([lines[0], cut, lines[1], lines[1], *lines[2:]]))
    assert sorted(e["episode_id"] for e in load_run(tmp_path / "r")[1]) == sorted(set(ids))


def test_feedback_level_and_oracle_are_part_of_a_run(tmp_path):
    import yaml

    from ponder.runner import run

    with pytest.raises(ConfigError, match="feedback must be one of"):
        RunConfig(feedback="hints")
    with pytest.raises(ConfigError, match="not as an env option"):
        RunConfig(env_kwargs={"feedback": "full"})
    with pytest.raises(ConfigError, match="agent_tests applies to"):
        RunConfig(agent="debate", agent_tests=2)
    cfg = RunConfig(agent="search", algorithm="best_of_n", prm="verifier", n=2, tasks=1, trials=1,
                    policy="scripted", script=("Answer: 13",), runs_dir=str(tmp_path), name="o")  # fmt: skip
    assert cfg.oracle and not cfg.replace(prm=None, algorithm="majority").oracle
    assert RunConfig(agent="search", algorithm="lats").oracle  # its terminal reward is the env's verdict
    assert not RunConfig(agent="search", algorithm="lats", search_options={"use_env_reward": False}).oracle
    # HumanEval's verifier runs only the visible tests: searching by it reads no answer
    assert not RunConfig(agent="search", env="humaneval", prm="verifier", algorithm="best_of_n").oracle
    result = run(cfg, progress=False)
    saved = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert saved["oracle"] is True and saved["feedback"] == "binary"
    assert result.episodes[0]["oracle"] is True and result.episodes[0]["feedback"] == "binary"
    assert "ORACLE" in (tmp_path / "o" / "report.md").read_text()
    # a run saved before feedback levels existed ran with directional feedback, and resumes so
    del saved["feedback"], saved["oracle"]
    (tmp_path / "o" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert RunConfig.from_yaml(tmp_path / "o" / "config.yaml").feedback == "directional"


def test_concept_modes_are_checked_against_the_agent():
    assert RunConfig(agent="embodied", env="toy-rooms", concept="clin-voted").concept == "clin-voted"
    assert RunConfig(agent="reflexion", concept="expel-frozen", insight_set="v2").insight_set == "v2"
    with pytest.raises(ConfigError, match="not for single-step agents"):
        RunConfig(agent="reflexion", concept="clin")
    with pytest.raises(ConfigError, match="unknown concept mode"):
        RunConfig(agent="reflexion", concept="expel")
