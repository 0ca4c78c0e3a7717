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
    assert (tmp_path / "episodes.torn").read_text().startswith('{"episode_id": "b"')
