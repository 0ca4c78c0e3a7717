"""A tiny deterministic multi-step world: the fake env for embodied-agent tests and examples.

Like ``ScriptedPolicy`` for models, it lets the embodied agent's graph, grounding, memory and
runner be tested in milliseconds without a JVM or game files. Three tasks:

- ``toy/chest``: take the key, open the chest (50 points for the key, 100 for the chest);
- ``toy/apple``: open the door, go to the kitchen, eat the apple;
- ``toy/lamp``: the lamp breaks if dropped: drop it and the episode is lost.

``info["admissible_actions"]`` lists what can be done; unknown actions leave the world as it
was ("Nothing happens."). Score is 0-100, ``success`` at 100.

Example:
    >>> env = ToyRoomsEnv()
    >>> obs, info = env.reset(options={"task_id": "toy/chest"})
    >>> info["admissible_actions"]
    ['look', 'take key', 'open chest']
    >>> env.step("open chest")[0]
    'The chest is locked.'
    >>> _ = env.step("take key"); obs, reward, done, _, info = env.step("open chest")
    >>> obs, reward, done, info["score"], info["success"]
    ('You open the chest with the key. Inside is a gold coin.', 50.0, True, 100.0, True)
"""

from __future__ import annotations

from typing import Any, ClassVar

from ponder.environments.base import StepResult, TextEnv

__all__ = ["ToyRoomsEnv"]

_TASKS = {
    "toy/chest": "Your task is to open the chest.",
    "toy/apple": "Your task is to eat the apple.",
    "toy/lamp": "Your task is to put the lamp on the shelf.",
}


class ToyRoomsEnv(TextEnv):
    """Three small tasks with fixed rules (see the module docstring)."""

    name: ClassVar[str] = "toy-rooms"

    def __init__(
        self, *, max_steps: int | None = 20, render_mode: str | None = None, feedback: str = "binary"
    ):
        super().__init__(max_steps=max_steps, render_mode=render_mode, feedback=feedback)
        self._state: dict[str, Any] = {}

    def task_ids(self) -> list[str]:
        return list(_TASKS)

    def task_text(self, observation: str) -> str:
        return observation.split("\n", 1)[0]

    def walkthrough(self, task_id: str) -> list[str]:
        """The shortest winning actions (for scripted tests)."""
        return {
            "toy/chest": ["take key", "open chest"],
            "toy/apple": ["open door", "go to kitchen", "eat apple"],
            "toy/lamp": ["take lamp", "put lamp on shelf"],
        }[task_id]

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        self._state = {"task": task_id, "has": set(), "door": False, "room": "hall", "score": 0.0}
        return f"{_TASKS[task_id]}\n{self._look()}", self._info()

    def _look(self) -> str:
        t, st = self._state["task"], self._state
        if t == "toy/chest":
            return "You are in a study. There is a chest and a key on the table."
        if t == "toy/apple":
            if st["room"] == "kitchen":
                return "You are in the kitchen. There is an apple."
            return f"You are in the hall. The door to the kitchen is {'open' if st['door'] else 'closed'}."
        return "You are in a workshop. There is a lamp and a shelf."

    def _actions(self) -> list[str]:
        t, st = self._state["task"], self._state
        if t == "toy/chest":
            return ["look", *([] if "key" in st["has"] else ["take key"]), "open chest"]
        if t == "toy/apple":
            if st["room"] == "kitchen":
                return ["look", "eat apple", "go to hall"]
            return ["look", "close door" if st["door"] else "open door", "go to kitchen"]
        return ["look", *(["drop lamp", "put lamp on shelf"] if "lamp" in st["has"] else ["take lamp"])]

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {"admissible_actions": self._actions(), "score": self._state["score"], **extra}

    def _step(self, action: str) -> StepResult:
        st, before = self._state, self._state["score"]
        obs, lost = self._apply(action.strip().lower())
        won = st["score"] >= 100
        info = self._info(success=won, feedback="" if won else obs, lost=lost)
        return obs, float(st["score"] - before), won or lost, False, info

    def _apply(self, a: str) -> tuple[str, bool]:
        st = self._state
        if a == "look":
            return self._look(), False
        if a not in self._actions():
            return "Nothing happens.", False
        if a.startswith("take "):
            st["has"].add(a[5:])
            st["score"] = 50.0
            return f"You take the {a[5:]}.", False
        if a == "open chest":
            if "key" not in st["has"]:
                return "The chest is locked.", False
            st["score"] = 100.0
            return "You open the chest with the key. Inside is a gold coin.", False
        if a in ("open door", "close door"):
            st["door"] = a == "open door"
            if st["door"]:
                st["score"] = max(st["score"], 30.0)
            return f"You {a.split()[0]} the door.", False
        if a == "go to kitchen":
            if not st["door"]:
                return "The door is closed.", False
            st["room"], st["score"] = "kitchen", max(st["score"], 60.0)
            return self._look(), False
        if a == "go to hall":
            st["room"] = "hall"
            return self._look(), False
        if a == "eat apple":
            st["score"] = 100.0
            return "You eat the apple. Delicious.", False
        if a == "drop lamp":
            st["score"] = 0.0
            return "The lamp falls and breaks. You lost.", True
        st["score"] = 100.0  # put lamp on shelf
        return "You put the lamp on the shelf.", False
