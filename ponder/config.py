"""Run configuration: one dataclass, loaded from CLI flags or a YAML file.

Validation only, no side effects (nothing is created or loaded here).

Example:
    >>> cfg = RunConfig(agent="reflexion", env="math", tasks=5, trials=2)
    >>> cfg.run_dir.name
    'reflexion-math'
    >>> RunConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ponder.errors import ConfigError, PonderError

__all__ = ["SINGLE_ANSWER_LOOPS", "RunConfig", "load_yaml"]

PolicyKind = Literal["local", "openai", "scripted"]

#: the Reflexion loop and its baselines: one answer per trial, graded by the env
SINGLE_ANSWER_LOOPS = ("reflexion", "retry-feedback", "retry")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; saved as ``runs/NAME/config.yaml``.

    Attributes:
        agent: agent name (``ponder agents`` lists them).
        env: env name (``ponder envs`` lists them).
        env_kwargs: options for the env factory, e.g. ``{"level": 2}``.
        feedback: how much the env's feedback says (``binary``: right or wrong; ``directional``:
            which way, which tests; ``full``: what the papers' settings showed). Every agent of
            a comparison should run at the same level.
        tasks: how many tasks (the first N of the env's task list).
        trials: attempts per task.
        concurrency: episodes run at once.
        seed: seeds the env's tasks and every sampling call.
        policy: ``local`` (transformers), ``openai`` (any OpenAI-compatible server) or
            ``scripted`` (a fixed reply; for smoke tests).
        model: local path (``local``; default: the packaged SmolLM2) or model name (``openai``).
        base_url: the OpenAI-compatible server (``openai``).
        device: ``auto``, ``cpu`` or ``cuda[:i]`` (``local``).
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16`` (``local``).
        temperature: sampling temperature of every attempt.
        max_tokens: new tokens per attempt.
        name: run name; the run directory is ``runs_dir/name``.
        runs_dir: where run directories go.
        memory: a shared memory directory; default ``runs_dir/name/memory``; ``"none"``: no memory.
        memory_url: a Chroma server (``http://HOST:PORT``) to keep memory in instead of a directory.
        embedder: ``minilm`` (real, offline) or ``hashing`` (fast, for tests).
        memory_modes: learning modes of agents that use memory: any of ``experiential``,
            ``reflective``, ``concept``. Empty (the default): agents write memory but recall
            nothing from it; opt in, since recalled text can also mislead a small model.
        concept: how the ``concept`` memory mode learns: ``expel-online`` (reflexion/retry
            default: ExpeL-style, online), ``expel-frozen`` (recall an ExpeL set extracted by
            ``ponder memory extract-insights``, never written), ``clin`` (embodied default: CLIN's
            rewrite after each trial), ``clin-voted`` (embodied: CLIN-style votes); None: the
            agent's default.
        insight_set: the ExpeL set ``expel-frozen`` recalls (``extract-insights --name``).
        resume: continue an existing run directory.
        script: replies of the ``scripted`` policy.
        algorithm: the search algorithm of the ``search`` agent and of ``actor_search``
            (``ponder.search.ALGORITHMS``: beam, dvts, best_of_n, weighted_best_of_n, majority, ...).
        n: the search width (samples, or beams x samples per beam).
        prm: a PRM folder (``ponder prm train`` writes one; Math-Shepherd and Qwen2.5-Math-PRM
            folders load too), ``verifier`` (the env's verifier: an oracle), ``judge`` (the
            policy grades steps in words) or None.
        actor_search: make each Reflexion/retry attempt a search with this algorithm.
        search_tokens: generated tokens per search at most (None: the algorithm's own bound).
        search_options: the algorithm's options, e.g. ``{beam_width: 4}``.
        step_tokens: new tokens per search step.
        max_steps: steps per searched solution at most.
        env_steps: actions per trial at most, for the embodied agents.
        agents: debaters (the ``debate`` agent).
        rounds: debate rounds, the first (independent answers) included.
        aggregator: how a debate decides: ``majority`` or ``judge``.
        topology: the ``team`` agent's topology: chain, star, mesh, layered or random.
        agent_tests: unit tests the model writes for itself before its first attempt (reflexion,
            retry, retry-feedback on HumanEval, as Reflexion does); they join the docstring's
            examples as the visible tests its feedback and stopping come from.
        run_id: the id episodes and memory records carry (provenance, record ids). Set to the
            run's name when the run is created and kept when its directory is moved or copied,
            so a resumed node rewrites the records it wrote before instead of adding new ones.
            Where a run reads and writes is always ``runs_dir/name``, never this id.
    """

    agent: str = "reflexion"
    env: str = "math"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    feedback: str = "binary"
    tasks: int = 20
    trials: int = 3
    concurrency: int = 4
    seed: int = 0
    policy: PolicyKind = "local"
    model: str | None = None
    base_url: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    temperature: float = 0.7
    max_tokens: int = 128
    name: str | None = None
    runs_dir: str = "runs"
    memory: str | None = None
    memory_url: str | None = None
    embedder: str = "minilm"
    memory_modes: tuple[str, ...] = ()
    concept: str | None = None
    insight_set: str = "expel"
    resume: bool = False
    script: tuple[str, ...] = ()
    algorithm: str = "beam"
    n: int = 8
    prm: str | None = None
    actor_search: str | None = None
    search_tokens: int | None = None
    search_options: dict[str, Any] = field(default_factory=dict)
    step_tokens: int = 48
    max_steps: int = 8
    env_steps: int = 30
    agents: int = 3
    rounds: int = 2
    aggregator: str = "majority"
    topology: str = "star"
    agent_tests: int = 0
    run_id: str | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        if self.tasks > MAX_TASKS:  # envs build their task lists up front: a typo must not hang
            raise ConfigError(f"tasks must be <= {MAX_TASKS:,}, got {self.tasks:,}; pass a smaller --tasks")
        for key, lo in (
            ("tasks", 1),
            ("trials", 1),
            ("concurrency", 1),
            ("max_tokens", 1),
            ("n", 1),
            ("step_tokens", 1),
            ("max_steps", 1),
            ("env_steps", 1),
            ("agents", 1),
            ("rounds", 1),
        ):
            if getattr(self, key) < lo:
                raise ConfigError(f"{key} must be >= {lo}, got {getattr(self, key)}")
        from ponder.agents.topology import TOPOLOGIES

        if self.topology not in TOPOLOGIES:
            raise ConfigError(f"unknown topology {self.topology!r}; use one of {', '.join(TOPOLOGIES)}")
        if self.aggregator not in ("majority", "judge"):
            raise ConfigError(f"aggregator must be majority or judge, got {self.aggregator!r}")
        if self.policy not in ("local", "openai", "scripted"):
            raise ConfigError(f"policy must be local, openai or scripted, got {self.policy!r}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.policy == "scripted" and not self.script:
            raise ConfigError("policy 'scripted' needs replies: pass --script 'Answer: 4' (repeatable)")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError(f"run name {self.name!r} must be a plain directory name, e.g. my-run")
        if self.memory and self.memory_url:
            raise ConfigError("pass --memory DIR or --memory-url URL, not both")
        if not isinstance(self.env_kwargs, dict):
            raise ConfigError("env_kwargs must be a mapping, e.g. {level: 2}")
        if not isinstance(self.search_options, dict):
            raise ConfigError("search_options must be a mapping, e.g. {beam_width: 4}")
        if self.search_tokens is not None and self.search_tokens < 1:
            raise ConfigError(f"search_tokens must be >= 1, got {self.search_tokens}")
        from ponder.environments.base import check_feedback

        check_feedback(self.feedback)
        if "feedback" in self.env_kwargs:
            raise ConfigError(
                "set the feedback level with --feedback (feedback: in YAML), not as an env option"
            )
        if self.agent_tests < 0:
            raise ConfigError(f"agent_tests must be >= 0, got {self.agent_tests}")
        if self.agent_tests and self.agent not in SINGLE_ANSWER_LOOPS:
            raise ConfigError(f"agent_tests applies to {', '.join(SINGLE_ANSWER_LOOPS)}, not {self.agent!r}")
        if self.actor_search and self.agent not in SINGLE_ANSWER_LOOPS:
            raise ConfigError(
                f"actor_search applies to {', '.join(SINGLE_ANSWER_LOOPS)}, not {self.agent!r}; "
                "use --agent search --algorithm NAME to search alone"
            )
        object.__setattr__(self, "script", tuple(self.script))
        from ponder.agents import EMBODIED
        from ponder.agents.memory_nodes import concept_options, parse_memory_modes

        object.__setattr__(self, "memory_modes", parse_memory_modes(self.memory_modes))
        if self.memory_off and (self.memory_modes or self.memory_url):
            raise ConfigError(
                "memory none turns memory off; drop --memory-modes / --memory-url, or --memory none"
            )
        concept_options(self.concept, embodied=self.agent in EMBODIED, insight_set=self.insight_set)

    @property
    def oracle(self) -> bool:
        """Whether the run reads gold answers beyond the env's feedback: the env's verifier as a
        PRM (``prm: verifier``) or as a search's terminal reward (MCTS's ``use_env_reward``;
        LATS uses it unless ``use_env_reward: false``). Saved in config.yaml, and every episode,
        report and plot of such a run says "oracle"."""
        from ponder.environments import spec

        lats = "lats" in (self.algorithm if self.agent == "search" else None, self.actor_search)
        env_reward = self.search_options.get("use_env_reward", lats)
        try:  # HumanEval's verifier runs only the visible tests: using it reads no answer
            reads = bool(getattr(spec(self.env).load(), "verifier_reads_answer", True))
        except PonderError:
            reads = True
        return reads and (self.prm == "verifier" or bool(env_reward))

    @property
    def run_name(self) -> str:
        return self.name or f"{self.agent}-{self.env}"

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_name

    @property
    def memory_off(self) -> bool:
        """``memory: none``: the run keeps no memory store at all."""
        return str(self.memory or "").lower() == "none"

    @property
    def memory_dir(self) -> Path:
        return Path(self.memory) if self.memory else self.run_dir / "memory"

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["script"] = list(self.script)
        d["memory_modes"] = list(self.memory_modes)
        d["oracle"] = self.oracle  # derived: for readers of config.yaml; recomputed on load
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = {k: v for k, v in data.items() if k != "oracle"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; valid keys: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """A saved run's config. Runs saved before feedback levels existed ran with directional
        feedback, and get it back."""
        data = load_yaml(path)
        data.setdefault("feedback", "directional")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


#: the most tasks one run takes (envs generate their task lists when they are made)
MAX_TASKS = 100_000

_KINDS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_types(cfg: Any) -> None:
    """A value of the wrong type (``tasks: five`` in a YAML file) is a one-line error naming the key."""
    for f in dataclasses.fields(cfg):
        wanted = str(f.type).replace(" ", "").split("|")
        value = getattr(cfg, f.name)
        if value is None and "None" in wanted:
            continue
        if any(w not in _KINDS and w != "None" for w in wanted):
            continue  # a type this check does not know (tuples, mappings): checked where it is used
        kinds = tuple(k for w in wanted for k in _KINDS.get(w, ()))
        # bool is an int to Python, never to a config file
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(w for w in wanted if w != "None")
            raise ConfigError(
                f"{f.name} must be {'an' if names[0] in 'aeiou' else 'a'} {names}, got {value!r}"
            )


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass the path of a YAML file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(
            f"config file {p} is not valid YAML ({str(e).splitlines()[0]}); fix the syntax"
        ) from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values")
    return data
