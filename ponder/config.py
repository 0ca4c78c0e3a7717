"""Run configuration: every run option declared once, in ``RunConfig``.

Each field is one option: its type, default, bounds and help text, the CLI flag ``ponder run``
makes of it (``ponder.cli`` builds the flags from these fields), the group it shows in, the
agent keyword it becomes, and whether a resumed run must keep it. YAML files, flags and Python
all go through the same validation, and every error is one line naming the key and the fix.

Validation only, no side effects (nothing is created or loaded here).

Example:
    >>> cfg = RunConfig(agent="reflexion", env="math", tasks=5, trials=2)
    >>> cfg.run_dir.name
    'reflexion-math'
    >>> RunConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> RunConfig(tasks="five")
    Traceback (most recent call last):
    ...
    ponder.errors.ConfigError: tasks must be an int, got 'five'
    >>> "concurrency" in RunConfig.defining()  # how a run goes, not what it finds: may change on resume
    False

Adding a run option is one field here (with ``option(...)``); an agent that reads it names it in
its ``AgentSpec.options`` (``ponder.agents.registry``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from ponder.errors import ConfigError, PonderError

__all__ = ["MAX_TASKS", "SINGLE_ANSWER_LOOPS", "RunConfig", "load_yaml", "option", "option_meta"]

PolicyKind = Literal["local", "openai", "scripted"]

#: the Reflexion loop and its baselines: one answer per trial, graded by the env
SINGLE_ANSWER_LOOPS = ("reflexion", "retry-feedback", "retry")

#: the most tasks one run takes (envs generate their task lists when they are made)
MAX_TASKS = 100_000


def option(
    default: Any = None,
    help: str = "",
    *,
    flag: str | None = "",
    group: str | None = None,
    arg: str | None = None,
    defining: bool = True,
    metavar: str | None = None,
    show_default: bool = True,
    ge: float | None = None,
    le: float | None = None,
) -> Any:
    """A ``RunConfig`` field with what the CLI and the runner need to know about it.

    Args:
        default: the default value (a dict default is copied per instance).
        help: the option's help text (CLI ``--help`` and the field's description).
        flag: the CLI flag; ``""`` (default): ``--`` and the name with dashes; None: no flag.
        group: the ``--help`` section it shows in (None: the main one).
        arg: the agent factory's keyword it becomes (default: the option's own name).
        defining: part of what a run's results mean: a resumed run must keep it.
        metavar: the value's name in ``--help``.
        show_default: append "(default X)" to the help text.
        ge, le: bounds (the error names the option and the bound).
    """
    meta = {
        "flag": flag,
        "group": group,
        "arg": arg,
        "defining": defining,
        "metavar": metavar,
        "show_default": show_default,
    }
    kw: dict[str, Any] = {"description": help, "json_schema_extra": {"ponder": meta}, "ge": ge, "le": le}
    if isinstance(default, dict):
        return Field(default_factory=lambda: dict(default), **kw)
    return Field(default=default, **kw)


def option_meta(info: FieldInfo) -> dict[str, Any]:
    """What ``option`` recorded about a field (flag, group, arg, defining, ...)."""
    extra = info.json_schema_extra
    return dict(extra["ponder"]) if isinstance(extra, dict) else {}  # type: ignore[arg-type]


_SEARCH = "search (--agent search, or --actor-search with reflexion/retry)"
_MULTI = "multi-agent (--agent debate, team)"
_EMBODIED = "embodied agents (--agent embodied, embodied-plan, embodied-retry)"


class RunConfig(BaseModel):
    """Everything that defines a run; saved as ``runs/NAME/config.yaml``.

    Each field's description is its help text: ``ponder run --help`` lists them all, and
    ``RunConfig.model_fields[NAME].description`` reads one.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid", validate_default=True)

    agent: str = option("reflexion", "agent name (see 'ponder agents')")
    env: str = option("math", "env name (see 'ponder envs')")
    env_kwargs: dict[str, Any] = option(
        {},
        "env option, e.g. --env-arg level=2 (repeatable)",
        flag="--env-arg",
        metavar="KEY=VALUE",
        show_default=False,
    )
    feedback: Literal["binary", "directional", "full"] = option(
        "binary",
        "how much the env's feedback says: binary (right or wrong), directional (which way, which "
        "tests), full (what the papers' settings showed); every agent of a comparison should run "
        "at the same level",
    )
    tasks: int = option(20, "number of tasks (the first N of the env's task list)", ge=1, le=MAX_TASKS)
    trials: int = option(3, "attempts per task", ge=1)
    concurrency: int = option(4, "episodes run at once", ge=1, defining=False)
    seed: int = option(0, "seeds the env's tasks and every sampling call")
    policy: PolicyKind = option(
        "local",
        "local (transformers), openai (any OpenAI-compatible server) or scripted (fixed replies; "
        "smoke tests)",
    )
    model: str | None = option(
        None,
        "local model directory or packaged name (default: the packaged SmolLM2), or the model name "
        "on an OpenAI-compatible server",
    )
    base_url: str | None = option(None, "OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    device: str = option("auto", "auto, cpu or cuda[:i] (local policy)", defining=False)
    dtype: str = option("auto", "auto, float32, bfloat16 or float16 (local policy)", defining=False)
    temperature: float = option(0.7, "sampling temperature of every attempt", ge=0)
    max_tokens: int = option(128, "new tokens per attempt", ge=1)
    name: str | None = option(
        None, "run name: the run directory is RUNS_DIR/NAME (default AGENT-ENV)", defining=False
    )
    runs_dir: str = option("runs", "where run directories go", defining=False)
    memory: str | None = option(
        None, "a memory directory shared across runs (default RUN_DIR/memory); none: no memory at all"
    )
    memory_url: str | None = option(
        None, "keep memory on a Chroma server instead of a directory, e.g. http://127.0.0.1:8000"
    )
    embedder: Literal["minilm", "hashing"] = option(
        "minilm", "memory embedder: minilm (real, offline) or hashing (fast, for tests)"
    )
    memory_modes: tuple[str, ...] = option(
        (),
        "what agents that use memory recall: any of experiential,reflective,concept (comma-separated), "
        "or none; by default they write memory but recall nothing (recalled text can mislead a "
        "small model: opt in)",
        show_default=False,
    )
    concept: str | None = option(
        None,
        "how --memory-modes concept learns: expel-online (reflexion/retry default: ExpeL-style, "
        "online), expel-frozen (recall a set from 'ponder memory extract-insights'), clin "
        "(embodied default: CLIN's rewrite after each trial), clin-voted (embodied, CLIN-style votes)",
    )
    insight_set: str = option("expel", "the ExpeL set expel-frozen recalls (extract-insights --name)")
    resume: bool = option(False, "continue the run directory NAME", defining=False, show_default=False)
    script: tuple[str, ...] = option((), "a reply of the scripted policy (repeatable)", show_default=False)
    algorithm: str = option(
        "beam",
        "search algorithm of --agent search (see 'ponder agents': beam, dvts, best_of_n, "
        "weighted_best_of_n, majority, mcts, lats, ...)",
        group=_SEARCH,
    )
    n: int = option(8, "search width: samples, or beams x samples per beam", group=_SEARCH, ge=1)
    prm: str | None = option(
        None,
        "PRM folder (from 'ponder prm train'; Math-Shepherd and Qwen2.5-Math-PRM folders load too), "
        "a ponder serve --prm URL, verifier (the env's verifier: an oracle) or judge (the policy "
        "grades steps in words)",
        group=_SEARCH,
    )
    actor_search: str | None = option(
        None, "make each reflexion/retry attempt a search with this algorithm", group=_SEARCH
    )
    search_tokens: int | None = option(
        None,
        "generated tokens per search at most (default: the algorithm's own bound)",
        group=_SEARCH,
        arg="budget",
        ge=1,
    )
    search_options: dict[str, Any] = option(
        {},
        "algorithm option, e.g. --search-arg beam_width=4 (repeatable)",
        flag="--search-arg",
        metavar="KEY=VALUE",
        group=_SEARCH,
        arg="options",
        show_default=False,
    )
    step_tokens: int = option(48, "new tokens per search step", group=_SEARCH, ge=1)
    max_steps: int = option(8, "steps per searched solution at most", group=_SEARCH, ge=1)
    env_steps: int = option(30, "actions per trial at most", group=_EMBODIED, arg="max_steps", ge=1)
    agents: int = option(3, "debaters, or a team's working agents", group=_MULTI, arg="n_agents", ge=1)
    rounds: int = option(2, "debate rounds, the first included; a team's cycle rounds", group=_MULTI, ge=1)
    aggregator: Literal["majority", "judge"] = option("majority", "how a debate decides", group=_MULTI)
    topology: str = option("star", "the team's topology: chain, star, mesh, layered or random", group=_MULTI)
    agent_tests: int = option(
        0,
        "unit tests the model writes for itself before its first attempt (reflexion/retry on "
        "HumanEval, as Reflexion does); they join the docstring's examples as the visible tests",
        ge=0,
    )
    run_id: str | None = option(
        None,
        "the id episodes and memory records carry (provenance); set to the run's name when it is "
        "created and kept when its directory is moved, so a resumed run rewrites its own records",
        flag=None,
        defining=False,
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(_one_line(e)) from None

    @field_validator("script", mode="before")
    @classmethod
    def _script_tuple(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("memory_modes", mode="before")
    @classmethod
    def _memory_modes(cls, v: Any) -> Any:
        from ponder.agents.memory_nodes import parse_memory_modes

        return parse_memory_modes(v) if isinstance(v, (str, list, tuple)) or v is None else v

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        from ponder.agents.topology import TOPOLOGIES

        if self.topology not in TOPOLOGIES:
            raise ConfigError(f"unknown topology {self.topology!r}; use one of {', '.join(TOPOLOGIES)}")
        if self.policy == "scripted" and not self.script:
            raise ConfigError("policy 'scripted' needs replies: pass --script 'Answer: 4' (repeatable)")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError(f"run name {self.name!r} must be a plain directory name, e.g. my-run")
        if self.memory and self.memory_url:
            raise ConfigError("pass --memory DIR or --memory-url URL, not both")
        if "feedback" in self.env_kwargs:
            raise ConfigError(
                "set the feedback level with --feedback (feedback: in YAML), not as an env option"
            )
        if self.memory_off and (self.memory_modes or self.memory_url):
            raise ConfigError(
                "memory none turns memory off; drop --memory-modes / --memory-url, or --memory none"
            )
        self._check_agent_options()
        return self

    def _check_agent_options(self) -> None:
        """An option another agent reads, set for this one, is refused (it would do nothing)."""
        from ponder.agents.memory_nodes import concept_options
        from ponder.agents.registry import AGENT_SPECS

        spec = AGENT_SPECS.get(self.agent)
        if spec is None:
            return  # the runner names the unknown agent with the choices
        read_by: dict[str, list[str]] = {}
        for s in AGENT_SPECS.values():
            for o in s.options:
                read_by.setdefault(o, []).append(s.name)
        defaults = RunConfig._defaults()
        for o, readers in read_by.items():
            if o not in spec.options and getattr(self, o) != defaults[o]:
                hint = "; use --agent search --algorithm NAME to search alone" if o == "actor_search" else ""
                raise ConfigError(
                    f"{o} applies to {', '.join(readers)}, not {self.agent!r}; drop it or pick one of those "
                    f"agents{hint}"
                )
        concept_options(self.concept, embodied=spec.embodied, insight_set=self.insight_set)

    @classmethod
    def _defaults(cls) -> dict[str, Any]:
        return {k: f.get_default(call_default_factory=True) for k, f in cls.model_fields.items()}

    @classmethod
    def defining(cls) -> tuple[str, ...]:
        """The options that define a run's results: a resumed run must keep them."""
        return tuple(k for k, f in cls.model_fields.items() if option_meta(f).get("defining", True))

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
        """A copy with ``changes``, validated again."""
        return type(self)(**{**self._fields(), **changes})

    def _fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in type(self).model_fields}

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        d["script"] = list(self.script)
        d["memory_modes"] = list(self.memory_modes)
        d["oracle"] = self.oracle  # derived: for readers of config.yaml; recomputed on load
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = {k: v for k, v in data.items() if k != "oracle"}
        known = set(cls.model_fields)
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


_TYPE_WORDS = {
    "int_type": "an int",
    "int_parsing": "an int",
    "float_type": "a float",
    "string_type": "a str",
    "bool_type": "a bool",
    "dict_type": "a mapping, e.g. {key: value}",
    "tuple_type": "a list",
}


def _one_line(e: ValidationError) -> str:
    """pydantic's first error as ponder's one line: the key, what it must be, what it got."""
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "config"
    got = err.get("input")
    ctx = err.get("ctx") or {}
    kind = err["type"]
    if kind == "value_error" and isinstance(ctx.get("error"), ConfigError):
        return str(ctx["error"])
    if kind in _TYPE_WORDS:
        return f"{key} must be {_TYPE_WORDS[kind]}, got {got!r}"
    if kind == "greater_than_equal":
        return f"{key} must be >= {ctx['ge']}, got {got}"
    if kind == "less_than_equal":
        bound = ctx["le"]
        return f"{key} must be <= {bound:,}, got {got:,}; pass a smaller --{key.replace('_', '-')}"
    if kind == "literal_error":
        return f"{key} must be one of {ctx.get('expected', '')}, got {got!r}"
    if kind == "extra_forbidden":
        return f"unknown config key {key!r}; valid keys: {', '.join(sorted(RunConfig.model_fields))}"
    return f"{key}: {err['msg']} (got {got!r})"


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
