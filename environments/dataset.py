"""``dataset``: question-answer tasks from your own file, graded by a verifier you pick.

Reads a local JSONL, CSV or Parquet file, or a folder written by ``Dataset.save_to_disk``, through
the ``datasets`` library (``pip install 'ponder[datasets]'``); nothing is ever fetched from the hub.
Each row is one single-step task: the question (and its options, for multiple choice) is the
observation, and the reply's final answer is graded against the row's answer by a grader of
``ponder.environments.graders`` (``math``, ``gsm8k``, ``numeric``, ``exact``, ``choice``, or your
function). The feedback says what was wrong, never the answer.

Rows are split into *train* and *test* by a seeded hash of their ids (``test_fraction``,
``split_seed``), so ``subset="train"`` (collection, fine-tuning) and ``subset="test"``
(evaluation) never share a row, whatever the run's own seed. Worked examples for the prompts
come from the training rows only, never the task's own row. Task ids are ``<file stem>/<row>``.

Example:
    >>> import json, pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sums.jsonl"
    >>> rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}.\\n#### {2 * i}"}
    ...         for i in range(10)]
    >>> _ = path.write_text("".join(json.dumps(r) + "\\n" for r in rows))
    >>> env = DatasetEnv(path, grader="gsm8k", subset="test", feedback="directional")
    >>> env.task_ids()
    ['sums/6', 'sums/7']
    >>> obs, _ = env.reset(options={"task_id": "sums/6"})
    >>> obs.splitlines()[0]
    'What is 6 + 6?'
    >>> env.step("6 + 6 = 13.\\nAnswer: 13")[4]["feedback"]
    'The final answer 13 is wrong (too high). Recheck each step.'
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ponder.environments.base import StepResult, TextEnv
from ponder.environments.dataset_files import load_rows
from ponder.environments.graders import ChoiceGrader, Grade, Grader, feedback, final_answer, make_grader
from ponder.errors import ConfigError

__all__ = ["SAMPLE_ROWS", "SUBSETS", "DatasetEnv", "load_rows"]

log = logging.getLogger(__name__)

SUBSETS = ("all", "train", "test")
INSTRUCTION = "Solve the problem. End your reply with a line of the form {fmt}."

#: what ``make("dataset")`` serves without a path: a try-out (and ``check_env``'s) set
SAMPLE_ROWS: tuple[dict[str, str], ...] = tuple(
    {"question": q, "answer": a}
    for q, a in (
        ("Mia has 4 boxes of 6 pens. How many pens does she have?", "4 * 6 = 24 pens.\n#### 24"),
        ("A train has 9 cars and 3 more are added. How many cars now?", "9 + 3 = 12 cars.\n#### 12"),
        ("Leo reads 15 pages a day for 3 days. How many pages?", "15 * 3 = 45 pages.\n#### 45"),
        ("Sam had 30 stamps and gave away 12. How many are left?", "30 - 12 = 18 stamps.\n#### 18"),
        ("Ava shares 28 grapes among 4 friends. How many each?", "28 / 4 = 7 grapes.\n#### 7"),
        ("A shop sells 7 cakes at 5 dollars. How many dollars?", "7 * 5 = 35 dollars.\n#### 35"),
        ("Noor has 11 shells, finds 8 and loses 2. How many now?", "11 + 8 = 19, 19 - 2 = 17.\n#### 17"),
        ("Each of 6 bags holds 9 apples; 5 are eaten. How many left?", "6 * 9 = 54, 54 - 5 = 49.\n#### 49"),
    )
)


class DatasetEnv(TextEnv):
    """Single-step tasks read from a local dataset file (see the module docstring).

    Args:
        path: a ``.jsonl`` / ``.json``, ``.csv`` or ``.parquet`` file, or a ``save_to_disk`` folder.
            None (and no ``rows``): ``SAMPLE_ROWS``, 8 word problems to try the env on.
        question, answer: the fields holding them (default ``question`` or ``problem``; ``answer``
            or ``solution``).
        id: the field of a row's id (default: its row number).
        choices: the field holding a row's options (a list): the env lists them as A, B, ...
            and grades with ``choice`` unless told otherwise.
        split: the rows of this value of a ``split`` column, or this split of a saved DatasetDict.
        subset: ``all``, ``train`` or ``test`` rows of the seeded split.
        test_fraction: the share of rows in ``test`` (0 <= f < 1).
        split_seed: seeds the split; not the run's ``--seed``, so every run sees the same split.
        grader: ``auto`` (by the answers: ``choice``, ``gsm8k``, ``math``, ``numeric`` or ``exact``),
            a name of ``graders.GRADERS``, ``"module:function"`` or a callable ``(prediction_text,
            gold) -> bool | float``.
        tolerance: ``numeric`` and ``gsm8k``: numbers this close are equal.
        num_examples: worked examples per task (training rows, never the task's own).
        rows: the rows themselves (a list of dicts or a ``datasets.Dataset``) instead of ``path``.
        feedback: ``binary`` (right or wrong), ``directional`` (no answer found, could not be read,
            too high / too low) or ``full`` (the same: more would be the answer).
    """

    name = "dataset"
    single_step = True

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        question: str | None = None,
        answer: str | None = None,
        id: str | None = None,
        choices: str | None = None,
        split: str | None = None,
        subset: str = "all",
        test_fraction: float = 0.2,
        split_seed: int = 0,
        grader: str | Callable[[str, Any], bool | float] | Grader = "auto",
        tolerance: float = 1e-6,
        num_examples: int = 2,
        rows: Sequence[Mapping[str, Any]] | Any = None,
        **kw: Any,
    ):
        super().__init__(**kw)
        if subset not in SUBSETS:
            raise ConfigError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
        if not 0 <= test_fraction < 1:
            raise ConfigError(f"test_fraction must be >= 0 and < 1, got {test_fraction}")
        if path is not None and rows is not None:
            raise ConfigError("pass the dataset's path or its rows, not both")
        if path is not None:
            p = Path(path)
            keyed, where, label = load_rows(p, split), p.name if p.is_dir() else p.stem, str(p)
        elif split is not None:
            raise ConfigError("split= picks rows of a file or folder; pass path= too")
        elif rows is not None:
            keyed, where, label = [(str(i), dict(r)) for i, r in enumerate(rows)], "rows", "the rows given"
        else:
            log.warning("dataset: no path given, so the built-in sample of 8 rows; pass path=FILE")
            keyed, where, label = [(str(i), dict(r)) for i, r in enumerate(SAMPLE_ROWS)], "sample", "sample"
        if not keyed:
            raise ConfigError(f"the dataset {label} has no rows")
        fields = list(dict.fromkeys(k for _, r in keyed[:100] for k in r))
        self.q_field = _field(label, fields, question, ("question", "problem"), "question")
        self.a_field = _field(label, fields, answer, ("answer", "solution"), "answer")
        id_field = _field(label, fields, id, (), "id") if id else None
        self.c_field = _field(label, fields, choices, (), "choices") if choices else None

        self.rows: dict[str, dict[str, Any]] = {}
        for key, row in keyed:
            if row.get(self.q_field) in (None, "") or row.get(self.a_field) in (None, ""):
                continue
            tid = f"{where}/{row[id_field] if id_field else key}"
            if tid in self.rows:
                raise ConfigError(f"{label}: the id {tid!r} appears twice; the {id} field must be unique")
            self.rows[tid] = row
        if len(self.rows) < len(keyed):
            log.warning(
                "dataset %s: %d rows without a question or answer left out",
                label,
                len(keyed) - len(self.rows),
            )
        if not self.rows:
            raise ConfigError(
                f"the dataset {label} has no row with both a {self.q_field} and an {self.a_field}"
            )

        most = max((len(r[self.c_field]) for r in self.rows.values()), default=5) if self.c_field else 5
        golds = [r[self.a_field] for r in self.rows.values()]
        chosen = _guess_grader(golds, self.c_field) if grader == "auto" else grader
        self.grader = make_grader(chosen, tolerance=tolerance, letters="ABCDEFGHIJ"[: max(most, 2)])
        self._gold = {tid: self._read_gold(tid, row) for tid, row in self.rows.items()}

        # the seeded split: rows ordered by a hash of (seed, id); the first share is the test set
        order = sorted(self.rows, key=lambda t: hashlib.blake2b(f"{split_seed}/{t}".encode()).digest())
        n = len(order)
        n_test = 0 if test_fraction == 0 or n < 2 else min(n - 1, max(1, round(n * test_fraction)))
        self.test_ids = frozenset(order[:n_test])
        self.train_ids = tuple(t for t in order if t not in self.test_ids)  # hash order: the examples
        self._tasks = [t for t in self.rows if subset == "all" or (t in self.test_ids) == (subset == "test")]
        if not self._tasks:
            raise ConfigError(
                f"subset={subset!r} of {label} is empty ({n} rows, test_fraction={test_fraction}); "
                "raise test_fraction or use subset='all'"
            )
        self.subset, self.num_examples = subset, num_examples
        self.instruction = INSTRUCTION.format(fmt=self.grader.answer_format)

    def _read_gold(self, tid: str, row: dict[str, Any]) -> Any:
        raw = row[self.a_field]
        if self.c_field and isinstance(self.grader, ChoiceGrader) and raw in list(row[self.c_field]):
            raw = list(row[self.c_field]).index(raw)  # the option's text: its index
        try:
            return self.grader.gold(raw)
        except ValueError as e:
            raise ConfigError(
                f"task {tid}: grader {self.grader.name!r} cannot use its {self.a_field}: {e}; "
                "pick another grader= (math, exact, ...) or answer= field"
            ) from e

    # --- the env ---------------------------------------------------------------------------
    def task_ids(self) -> list[str]:
        return list(self._tasks)

    def question(self, task_id: str) -> str:
        """The task's question, with its options as ``A. ...`` lines for multiple choice."""
        row = self.rows[task_id]
        text = str(row[self.q_field]).strip()
        if self.c_field:
            text += "\n" + "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(row[self.c_field]))
        return text

    def examples_for(self, task_id: str) -> tuple[tuple[str, str], ...]:
        """Worked examples from training rows (never ``task_id``'s own), the same for every task."""
        others = [t for t in self.train_ids if t != task_id][: self.num_examples]
        return tuple((f"{self.question(t)}\n{self.instruction}", self._worked(t)) for t in others)

    def _worked(self, tid: str) -> str:
        """A training row's answer as a reply: its reasoning, then the final answer line."""
        row = self.rows[tid]
        text = str(row[self.a_field]).strip()
        if isinstance(self.grader, ChoiceGrader):
            return f"Answer: {self._gold[tid]}"
        if "####" in text:  # GSM8K: the rationale, without its calculator annotations
            reasoning, _, final = text.rpartition("####")
            return f"{re.sub(r'<<[^>]*>>', '', reasoning).strip()}\nAnswer: {final.strip()}".strip()
        if self.a_field != "solution" and row.get("solution"):  # MATH-500: a short answer and a solution
            return f"{str(row['solution']).strip()}\nAnswer: {text}"
        boxed = final_answer(text) if "\\boxed" in text else None
        return f"{text}\nAnswer: {boxed}" if boxed else f"Answer: {text}"

    def answer_key(self, reply: str) -> str | None:
        """The final answer as the grader reads it (equal answers compare equal), or None."""
        return self.grader.read(reply)

    def task_text(self, observation: str) -> str:
        """The question without the instruction every task shares."""
        return observation.replace(self.instruction, "").strip() or observation

    def grade(self, task_id: str, reply: str) -> Grade:
        """Grade ``reply`` on ``task_id`` (no episode needed)."""
        return self.grader.grade(reply, self._gold[task_id])

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        return f"{self.question(task_id)}\n{self.instruction}", {"subset": self.subset}

    def _step(self, action: str) -> StepResult:
        g = self.grade(self.task_id or "", action)
        text = feedback(g, self.feedback, self.grader.answer_format)
        info = {"success": g.correct, "feedback": text, "parsed_answer": g.answer}
        return text, g.score, True, False, info


def _guess_grader(golds: list[Any], choices: str | None) -> str:
    """``auto``: choice with options; GSM8K's ``####``; LaTeX; plain numbers; else exact match."""
    texts = [str(g) for g in golds]
    if choices or all(re.fullmatch(r"\s*\(?[A-E][).]?\s*", t) for t in texts):
        return "choice"
    if all("####" in t for t in texts):
        return "gsm8k"
    if any(re.search(r"\\boxed|\\frac|\$", t) for t in texts):
        return "math"
    if all(re.fullmatch(r"\s*-?[\d,]*\.?\d+(?:\s*/\s*\d+)?\s*", t) for t in texts):
        return "numeric"
    return "exact"


def _field(label: str, fields: list[str], given: str | None, defaults: tuple[str, ...], what: str) -> str:
    """The field ``given`` (or the first default the rows have); a one-line error naming the fields."""
    for name in (given,) if given else defaults:
        if name in fields:
            return name
    looked = repr(given) if given else " or ".join(map(repr, defaults))
    raise ConfigError(
        f"the dataset {label} has no {what} field {looked}; its fields are: {', '.join(fields)}; "
        f"pass {what}=FIELD (--env-arg {what}=FIELD)"
    )
