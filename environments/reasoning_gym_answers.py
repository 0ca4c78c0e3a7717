"""Reading and checking a reasoning-gym answer before the package's scorer sees it.

``final_answer`` reads the reply's answer (``<answer>`` tags, else the last ``Answer:`` line);
``inert`` screens answers of tasks whose scorer runs them as code; ``makes_24`` checks a Game of
24 answer the package's own scorer would accept too easily; ``worked_steps`` writes an arithmetic
answer as Tree-of-Thoughts steps for worked examples.

Example:
    >>> final_answer("So it is <answer>3 + 4</answer>")
    '3 + 4'
    >>> inert("2*(3+4)"), inert("__import__('os').getpid()")
    (True, False)
    >>> worked_steps("(1 + 3) * 6", [1, 3, 6])
    ['1 + 3 = 4 (left: 4 6)', '4 * 6 = 24 (left: 24)', 'Answer: (1 + 3) * 6']
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from ponder.environments.graders import format_fraction

__all__ = ["final_answer", "inert", "makes_24", "worked_steps"]

# --- reading and checking an answer ----------------------------------------------------------------
_TAGGED = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)  # as reasoning_gym.utils.extract_answer
_ANSWER_LINE = re.compile(r"(?im)^[ \t]*(?:final[ \t]+)?answer[ \t]*[:=][ \t]*(.*)$")


def final_answer(reply: str) -> str | None:
    """The final answer in ``reply``: the last ``<answer>...</answer>``, else the last
    ``Answer:`` line (an empty one takes the lines after it, up to a blank line); None if neither.

    Example:
        >>> final_answer("3 + 4 = 7.\\nAnswer: 7")
        '7'
        >>> final_answer("Thinking...\\n<answer> apple, pear </answer>")
        'apple, pear'
        >>> final_answer("The board:\\nAnswer:\\n1 2\\n3 4\\n\\nDone.")
        '1 2\\n3 4'
        >>> final_answer("I am not sure.") is None
        True
    """
    tagged = _TAGGED.findall(reply)
    if tagged:
        return tagged[-1].strip()
    lines = list(_ANSWER_LINE.finditer(reply))
    if not lines:
        return None
    last = lines[-1]
    if last[1].strip():
        return last[1].strip()
    block = reply[last.end() :].lstrip("\n").split("\n\n", 1)[0].strip()
    return block or None


# the functions a math answer may call (SymPy knows them; none runs code or takes long)
_MATH_CALLS = frozenset({
    "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "acot", "sinh", "cosh", "tanh",
    "coth", "asinh", "acosh", "atanh", "exp", "log", "ln", "sqrt", "Abs", "abs", "sign",
})  # fmt: skip
_SAFE_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Constant, ast.Name,
    ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.List, ast.Tuple, ast.Set,
    ast.Dict, ast.Call,
)  # fmt: skip


def inert(answer: str, depth: int = 0) -> bool:
    """Whether evaluating ``answer`` as Python or SymPy can only compute a value, quickly.

    Text that is not a Python expression is inert (evaluating it fails at once). Otherwise
    only literals, names, operators, containers and calls of math functions pass, with no
    dunders or factorials, powers with a small exponent and no numeric power towers, and no
    string that is itself not inert.

    Example:
        >>> inert("6*(98 - 54) - 34 - 66"), inert("x**2/2 + sin(x) + C"), inert("apple, pear")
        (True, True, True)
        >>> inert("__import__('os').system('ls')"), inert("open('f').read()"), inert("9**9**99")
        (False, False, False)
    """
    if depth > 2 or "__" in answer or re.search(r"!(?!=)", answer):
        return False
    try:
        tree = ast.parse(answer.replace("^", "**").strip(), mode="eval")
    except SyntaxError:
        return True
    except (ValueError, RecursionError, MemoryError):  # null bytes, absurd nesting
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _SAFE_NODES):
            return False
        if isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name)
            and node.func.id in _MATH_CALLS
            and not node.keywords
            and not any(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)
        ):
            return False
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and not inert(node.value, depth + 1)
        ):
            return False
        if isinstance(node, ast.BinOp) and not _bounded(node):
            return False
    return True


def _bounded(node: ast.BinOp) -> bool:
    """A power, shift or repetition whose result stays small enough to compute at once."""
    if isinstance(node.op, ast.Pow):
        # x**(3/2) and (x + 1)**2 are fine; 9**99**99 and ((9**99)**99)**99 are not
        if _has(node.right, ast.Pow) or (_has(node.left, ast.Pow) and not _has(node.left, ast.Name)):
            return False
        if _has(node.right, ast.Name):
            return True
        try:
            return abs(_value(node.right, [])) <= 100
        except (ArithmeticError, LookupError, TypeError, ValueError):
            return False
    if isinstance(node.op, (ast.LShift, ast.RShift)):
        return (
            isinstance(node.right, ast.Constant)
            and isinstance(node.right.value, int)
            and node.right.value <= 64
        )
    if isinstance(node.op, ast.Mult):  # "a" * 10**9
        return not any(
            isinstance(side, (ast.List, ast.Tuple, ast.Set, ast.Dict))
            or (isinstance(side, ast.Constant) and isinstance(side.value, (str, bytes)))
            for side in (node.left, node.right)
        )
    return True


def _has(tree: ast.AST, kind: type) -> bool:
    """Whether ``tree`` holds a node of ``kind`` (a node type, or an operator such as ``ast.Pow``)."""
    return any(
        isinstance(n, kind) or (isinstance(n, ast.BinOp) and isinstance(n.op, kind)) for n in ast.walk(tree)
    )


def _arithmetic(text: str) -> ast.expr | None:
    """``text`` as an expression of numbers, ``+ - * /`` and brackets, or None."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError):
        return None
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub))
        number = isinstance(node, ast.Constant) and type(node.value) is int
        if not (ok or number):
            return None
    return tree


def _value(node: ast.expr, ops: list[tuple[Fraction, str, Fraction, Fraction]]) -> Fraction:
    """Evaluate exactly, recording each binary operation ``(left, op, right, result)``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _value(node.operand, ops)
        return -value if isinstance(node.op, ast.USub) else value
    if not isinstance(node, ast.BinOp):
        raise TypeError(f"not arithmetic: {type(node).__name__}")
    a, b = _value(node.left, ops), _value(node.right, ops)
    sign, out = {
        ast.Add: ("+", lambda: a + b),
        ast.Sub: ("-", lambda: a - b),
        ast.Mult: ("*", lambda: a * b),
        ast.Div: ("/", lambda: a / b),
    }[type(node.op)]
    result = out()
    ops.append((a, sign, b, result))
    return result


def _numbers(node: ast.expr) -> list[int]:
    return sorted(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, int))


def makes_24(answer: str | None, entry: dict[str, Any]) -> bool:
    """A Game of 24 answer uses exactly the task's four numbers and makes exactly 24."""
    tree = _arithmetic(answer or "")
    if tree is None or _numbers(tree) != sorted(entry["metadata"]["numbers"]):
        return False
    try:
        return _value(tree, []) == 24
    except ZeroDivisionError:
        return False


def worked_steps(expression: str, numbers: Sequence[int] | None = None) -> list[str] | None:
    """An arithmetic answer worked one operation per step (with the numbers left, given the
    starting ``numbers``), then its ``Answer:`` line; None if it is not plain arithmetic.

    Example:
        >>> worked_steps("1*3*5 + 9", [1, 3, 5, 9])
        ['1 * 3 = 3 (left: 3 5 9)', '3 * 5 = 15 (left: 9 15)', '15 + 9 = 24 (left: 24)', 'Answer: 1*3*5 + 9']
        >>> worked_steps("apple, pear") is None
        True
    """
    tree = _arithmetic(expression)
    if tree is None or not isinstance(tree, ast.BinOp):
        return None
    ops: list[tuple[Fraction, str, Fraction, Fraction]] = []
    try:
        _value(tree, ops)
    except ZeroDivisionError:
        return None
    left = [Fraction(n) for n in numbers] if numbers is not None else None
    steps = []
    for a, sign, b, result in ops:
        step = f"{format_fraction(a)} {sign} {format_fraction(b)} = {format_fraction(result)}"
        if left is not None and a in left:
            left.remove(a)
            if b in left:
                left.remove(b)
                left.append(result)
                step += f" (left: {' '.join(format_fraction(x) for x in sorted(left))})"
            else:  # a unary minus made a number the list does not hold: stop listing
                left = None
        elif left is not None:
            left = None
        steps.append(step)
    return [*steps, f"Answer: {expression.strip()}"]
