"""``textworld``: TextWorld text adventures (Côté et al., 2018), generated offline from a seed.

Each task is one game made by TextWorld's generator, the same game
``tw-make custom --world-size W --nb-objects O --quest-length Q --seed S`` makes
(``pip install 'ponder[textworld]'``). Levels set the size of the world and the quest:

=====  =====  =======  ============
level  rooms  objects  quest length
=====  =====  =======  ============
1      2      3        1
2      3      5        2
3      4      8        3
4      6      12       5
5      10     20       10
=====  =====  =======  ============

A game is a pure function of ``(seed, level, index)`` and the textworld version. It is
generated the first time its task is reset (about a second) and cached in a folder of
``cache_dir`` named by a hash of its parameters; later resets, in any process, reuse it.

Actions are game commands (``open chest``, ``go west``); ``info["admissible_actions"]``
lists those that make sense now. The reward is the change in game score,
``info["score"]`` the score out of 100, and the episode terminates when the quest is
done. Interpreter commands that write files, quit or restart (``save``, ``restore``,
``script``, ``quit``, ``restart``) are refused, as they would leave the game's state
tracking behind.

Example:
    >>> env = TextWorldEnv(level=1, num_games=2, seed=0)
    >>> env.task_ids()
    ['textworld/L1/0', 'textworld/L1/1']
    >>> obs, info = env.reset(options={"task_id": "textworld/L1/0"})  # doctest: +SKIP
    >>> for command in env.walkthrough("textworld/L1/0"):  # doctest: +SKIP
    ...     obs, reward, terminated, truncated, info = env.step(command)
    >>> info["success"], info["score"]  # doctest: +SKIP
    (True, 100.0)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ponder.environments.base import StepResult, TextEnv
from ponder.errors import ConfigError, DependencyNotInstalled, EnvError, UnknownName

__all__ = [
    "LEVELS",
    "GameSpec",
    "TextWorldEnv",
    "clean_text",
    "default_cache_dir",
    "ensure_game",
    "game_spec",
    "generate_game",
]

log = logging.getLogger(__name__)

#: level -> (rooms, objects, quest length)
LEVELS: dict[int, tuple[int, int, int]] = {
    1: (2, 3, 1),
    2: (3, 5, 2),
    3: (4, 8, 3),
    4: (6, 12, 5),
    5: (10, 20, 10),
}

# tw-make custom's defaults for what the levels leave open; all of it is in the cache key.
_RECIPE = {"recipe": 1, "theme": "house", "min_breadth": 1, "max_breadth": 5}
_MAX_ATTEMPTS = 5
_GAME_FILE = "game.z8"
# jericho seeds the interpreter from the clock by default (-1, or 0 which it reads as unset)
_FROTZ_SEED = 1
_REQUEST = {
    "feedback": True,
    "objective": True,
    "description": True,
    "inventory": True,
    "admissible_commands": True,
    "won": True,
    "lost": True,
    "score": True,
    "max_score": True,
    "policy_commands": True,  # also makes the game track quest progress
}
_REFUSED = frozenset({"save", "restore", "restart", "quit", "q", "script", "transcript"})

# textworld parses its logic (.twl) and text-grammar (.twg) files with ONE tatsu parser per
# grammar, made at import time and shared by the whole process: ``textworld.logic._PARSER``
# (textworld/logic/__init__.py:212, used by ``GameLogic._parse`` at line 1475) and
# ``textworld.textgen.TextGrammar._PARSER`` (textworld/textgen/__init__.py:102). A tatsu parser
# is its own parse context: the buffer, memo table and cut stack of the parse in progress live on
# the parser object, so two threads parsing at once corrupt each other (``IndexError: pop from
# empty list`` in tatsu's ``_option``, or a bogus FailedParse). The library gives no way to pass a
# parser of our own, so this lock serialises exactly the calls that reach those parsers:
#   - ``generator.make_game``: ``GameOptions.kb`` loads a fresh KnowledgeBase, parsing every .twl
#     file, and the text Grammar parses the .twg files it has not cached yet;
#   - ``textworld.start`` and ``Game.load``: the game's JSON holds its logic, which
#     ``GameLogic.parse`` parses (an lru_cache, but two first misses parse at the same time).
# Everything else runs unlocked: ``compile_game`` (Inform 7 in its own temp folder), and reset and
# step, which parse nothing and drive jericho's frotz, of which each env loads its own copy.
# (``warnings.catch_warnings`` around ``start`` swaps process-wide filters: inside the lock too.)
_PARSER_LOCK = threading.Lock()


def _textworld() -> Any:
    """The textworld package (the top-level one, not this module)."""
    try:
        import textworld
        import textworld.generator
    except ImportError as e:
        raise DependencyNotInstalled.for_extra("textworld", "textworld") from e
    return textworld


def default_cache_dir() -> Path:
    """``$PONDER_CACHE/textworld`` when ``PONDER_CACHE`` is set, else ``~/.cache/ponder/textworld``."""
    root = os.environ.get("PONDER_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "ponder") / "textworld"


# --- generation -------------------------------------------------------------------
def _derive_seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1


@dataclass(frozen=True)
class GameSpec:
    """The parameters one game is generated from: equal specs give the same game."""

    world_size: int
    nb_objects: int
    quest_length: int
    #: textworld's generator seed
    seed: int

    def key(self, textworld_version: str) -> str:
        """The cache folder name: the sizes, then a hash of everything that shapes the game."""
        blob = json.dumps({**asdict(self), **_RECIPE, "textworld": textworld_version}, sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return f"w{self.world_size}-o{self.nb_objects}-q{self.quest_length}-{digest}"


def game_spec(seed: int, level: int, index: int, sizes: tuple[int, int, int] | None = None) -> GameSpec:
    """The spec of game ``index`` of ``level`` for ``seed``; ``sizes`` replaces the level's sizes.

    Example:
        >>> game_spec(0, 1, 0) == game_spec(0, 1, 0) != game_spec(0, 1, 1)
        True
    """
    world_size, nb_objects, quest_length = sizes or LEVELS[level]
    return GameSpec(
        world_size, nb_objects, quest_length, _derive_seed(f"ponder-textworld/{seed}/{level}/{index}")
    )


def generate_game(spec: GameSpec, folder: str | Path) -> Path:
    """Generate and compile the game of ``spec`` into ``folder``; return the game file.

    A seed for which no quest can be built is retried with seeds derived from it, so the
    result stays a function of ``spec``.
    """
    tw = _textworld()
    for attempt in range(_MAX_ATTEMPTS):
        options = tw.GameOptions()
        options.seeds = spec.seed if attempt == 0 else _derive_seed(f"{spec.seed}/{attempt}")
        options.nb_rooms, options.nb_objects = spec.world_size, spec.nb_objects
        options.quest_length = spec.quest_length
        options.chaining.min_breadth = _RECIPE["min_breadth"]
        options.chaining.max_breadth = _RECIPE["max_breadth"]
        options.grammar.theme = _RECIPE["theme"]
        options.path = str(Path(folder) / _GAME_FILE)
        try:
            with _PARSER_LOCK:
                game = tw.generator.make_game(options)
        except tw.generator.QuestGenerationError:
            continue
        try:
            return Path(tw.generator.compile_game(game, options))
        except tw.generator.CouldNotCompileGameError as e:
            raise EnvError(
                f"textworld could not compile the game of {spec}; reinstall it (it ships the Inform 7 "
                "compiler): pip install --force-reinstall textworld"
            ) from e
    raise ConfigError(
        f"textworld found no quest of length {spec.quest_length} in {spec.world_size} rooms with "
        f"{spec.nb_objects} objects; lower quest_length or raise world_size and nb_objects"
    )


def ensure_game(spec: GameSpec, cache_dir: str | Path) -> Path:
    """The cached game file of ``spec``, generated first when the cache lacks it.

    The game is built in a temporary folder and renamed into place, so the cache never
    holds half a game and two processes racing on one game both end with a whole one.
    """
    cache = Path(cache_dir)
    folder = cache / spec.key(_textworld().__version__)
    if not folder.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache))
        try:
            log.info("generating textworld game %s", folder)
            generate_game(spec, tmp)
            (tmp / "spec.json").write_text(json.dumps(asdict(spec)))
            try:
                tmp.rename(folder)
            except OSError:
                if not folder.is_dir():  # anything but another process finishing first
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder / _GAME_FILE


# --- text -------------------------------------------------------------------------
_BANNER_LINE = re.compile(r"[\s_|\\$/<>]*")  # the ASCII-art banner uses only these characters
_STATUS = re.compile(r"\s+-= [^\n]*=-[\d/-]*\s*\Z")  # the status bar jericho appends: room, score/moves
_PROMPT = re.compile(r"\s*>\s*\Z")
_END_MENU = re.compile(r"\s*Would you like to RESTART.*\Z", re.DOTALL)
_ROOM = re.compile(r"^-= .+ =-$", re.MULTILINE)


def clean_text(text: str) -> str:
    """The game's text without the banner, the trailing prompt, status bar and end menu, and blank runs.

    Example:
        >>> clean_text("  ___\\n |_ \\\\$$\\n\\nHi.\\n\\n>     -= Attic =-0/1")
        'Hi.'
    """
    lines = text.split("\n")
    while lines and _BANNER_LINE.fullmatch(lines[0]):
        lines.pop(0)
    text = _END_MENU.sub("", _PROMPT.sub("", _STATUS.sub("", "\n".join(lines))))
    # centred lines and runs of blank lines are layout for a terminal, only tokens for a model
    text = "\n".join(line.strip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _intro(text: str, objective: str) -> str:
    """The first observation: the objective, then the starting room.

    The intro prints the objective too, but Inform rewrites some apostrophes in it as
    double quotes; the game's own objective string is the faithful one.
    """
    room = _ROOM.search(text)
    rest = text[room.start() :] if room else text
    return f"{objective}\n\n{rest}".strip() if objective else text


def _refused(command: str) -> str | None:
    """The interpreter command in ``command`` that is refused, if any (Inform runs each clause)."""
    for clause in re.split(r"[.,;!?]|\bthen\b", command.lower()):
        words = clause.split()
        if words and (words[0] in _REFUSED or words[0].startswith("tw-")):
            return words[0]
    return None


# --- the env ----------------------------------------------------------------------
def _levels(level: int | list[int]) -> list[int]:
    levels = [level] if isinstance(level, int) else list(level)
    if not levels or any(lv not in LEVELS for lv in levels):
        raise ConfigError(f"textworld level must be in {tuple(LEVELS)} (or a list of them), got {level!r}")
    return levels


def _sizes(world_size: int | None, nb_objects: int | None, quest_length: int | None) -> dict[str, int]:
    given = {"world_size": world_size, "nb_objects": nb_objects, "quest_length": quest_length}
    given = {k: v for k, v in given.items() if v is not None}
    for k, v in given.items():
        if not isinstance(v, int) or v < (0 if k == "nb_objects" else 1):
            raise ConfigError(f"textworld {k} must be an int >= {0 if k == 'nb_objects' else 1}, got {v!r}")
    return given


class TextWorldEnv(TextEnv):
    """Multi-step TextWorld games, seeded and cached on disk.

    Args:
        level: 1-5, or a list of levels to mix.
        num_games: games per level.
        seed: selects the games (the same ``(level, seed, index)`` is always the same game).
        world_size, nb_objects, quest_length: replace the levels' sizes for every game.
        max_steps: steps before the episode is truncated.
        cache_dir: where games are kept; by default :func:`default_cache_dir`.
    """

    name = "textworld"

    def __init__(
        self,
        level: int | list[int] = 1,
        num_games: int = 10,
        seed: int = 0,
        *,
        world_size: int | None = None,
        nb_objects: int | None = None,
        quest_length: int | None = None,
        max_steps: int | None = 50,
        cache_dir: str | Path | None = None,
        **kw: Any,
    ):
        super().__init__(max_steps=max_steps, **kw)
        self._tw = _textworld()
        levels = _levels(level)
        if num_games < 1:
            raise ConfigError(f"textworld num_games must be >= 1, got {num_games}")
        given = _sizes(world_size, nb_objects, quest_length)
        self.seed = seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        # levels interleave (L1/0, L2/0, ..., L1/1, ...): the first N tasks mix every level
        self.specs: dict[str, GameSpec] = {}
        for i in range(num_games):
            for lv in levels:
                w, o, q = LEVELS[lv]
                sizes = (given.get("world_size", w), given.get("nb_objects", o), given.get("quest_length", q))
                self.specs[f"textworld/L{lv}/{i}"] = game_spec(seed, lv, i, sizes)
        self._game: Any = None  # the running textworld env
        self._game_file: Path | None = None
        self._state: Any = None  # textworld's GameState after the last command
        self._walkthroughs: dict[str, list[str]] = {}

    def task_ids(self) -> list[str]:
        return list(self.specs)

    def game_file(self, task_id: str) -> Path:
        """The compiled game of ``task_id`` (generated now if not cached)."""
        if task_id not in self.specs:
            raise UnknownName(
                f"unknown task_id {task_id!r} for env 'textworld'; list them with env.task_ids()"
            )
        return ensure_game(self.specs[task_id], self.cache_dir)

    def walkthrough(self, task_id: str) -> list[str]:
        """The commands that win ``task_id`` from its start, for tests and scripted policies.

        Never show it to an agent: it is the answer.
        """
        if task_id not in self._walkthroughs:
            path = self.game_file(task_id).with_suffix(".json")
            with _PARSER_LOCK:
                game = self._tw.Game.load(str(path))
            self._walkthroughs[task_id] = list(game.walkthrough or [])
        return list(self._walkthroughs[task_id])

    def task_text(self, observation: str) -> str:
        """The objective: the first observation up to the starting room."""
        room = _ROOM.search(observation)
        return observation[: room.start()].strip() if room and room.start() else observation

    def close(self) -> None:
        """Stop the running game (the interpreter is freed); safe to call twice."""
        self._stop_game()
        self._done = True
        super().close()

    def _stop_game(self) -> None:
        if self._game is not None:
            self._game.close()
        self._game, self._game_file, self._state = None, None, None

    # --- the episode ---------------------------------------------------------------
    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        self._state = None  # until the new game is running
        path = self.game_file(task_id)
        if path != self._game_file:
            self._stop_game()
            with _PARSER_LOCK, warnings.catch_warnings():
                # jericho cannot read score or moves from any TextWorld game; textworld tracks them itself
                warnings.filterwarnings("ignore", message=".*is not fully supported")
                self._game = self._tw.start(str(path), self._tw.EnvInfos(**_REQUEST))
            self._game_file = path
        self._game.seed(_FROTZ_SEED)
        self._state = self._game.reset()
        obs = _intro(clean_text(self._state.feedback), self._state["objective"] or "")
        return obs, self._info(feedback="")

    def _step(self, action: str) -> StepResult:
        if self._state is None:  # the reset that started this episode failed
            raise EnvError("env 'textworld' has no running game; call reset() again")
        # one line: a newline would reach the interpreter as a second command
        command = " ".join(action.split())
        refused = _refused(command)
        if refused:
            obs = f"'{refused}' is an interpreter command and is disabled here; type a game action instead."
            return obs, 0.0, False, False, self._info(feedback=obs)
        before = self._state["score"] or 0
        self._state, _, _ = self._game.step(command)
        obs = clean_text(self._state.feedback)
        info = self._info(feedback=obs)
        terminated = info["success"] or info["lost"]
        return obs, float(info["raw_score"] - before), terminated, False, info

    def _info(self, feedback: str) -> dict[str, Any]:
        state = self._state
        raw, top = int(state["score"] or 0), int(state["max_score"] or 0)
        return {
            "admissible_actions": list(state["admissible_commands"] or []),
            "objective": state["objective"] or "",
            "description": clean_text(state["description"] or ""),
            "inventory": state["inventory"] or "",
            "score": 100.0 * raw / top if top else 0.0,
            "raw_score": raw,
            "max_score": top,
            "success": bool(state["won"]),
            "lost": bool(state["lost"]),
            "feedback": feedback,
        }
