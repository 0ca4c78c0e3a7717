"""Reading a request: its fields checked one by one, OpenAI's error shape, prompts and sampling.

Every check raises ``ApiError`` with one line that names the field and the fix; the HTTP layer
answers it as ``{"error": {"message", "type", "param", "code"}}`` with its status.

Example:
    >>> _stops({"stop": ["Q:", "END"]})
    ('Q:', 'END')
    >>> params, top_k, stream, include_usage = _sampling(
    ...     {"max_tokens": 8, "n": 2}, chat=True, policy=None, max_tokens_limit=64, max_n=4
    ... )
    >>> params.n, params.max_tokens, top_k, stream
    (2, 8, 0, False)
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

from ponder.errors import ConfigError
from ponder.models.types import Prompt, SamplingParams

MAX_STOP = 16
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions
#: arrays and objects nested deeper than this are refused before the body is parsed. Every later
#: step recurses once per level (json.loads, json.dumps in an error message, comparing a value,
#: logging it) and Python stops at 1000 levels (a RecursionError, a 500); the API nests 4 deep.
MAX_JSON_DEPTH = 64
_BRACKET_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
# fields this server cannot honour: accepted only with these "off" values
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none", "auto"),
    "function_call": ("none", "auto"),
    "response_format": ({"type": "text"},),
    "suffix": ("",),
    "echo": (False,),
}


class ApiError(Exception):
    """An HTTP error answer in OpenAI's JSON shape.

    Example:
        >>> ApiError(400, "n must be >= 1; send n=1 or more", param="n").body()["error"]["param"]
        'n'
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}
        self.close = close  # the request body was not read: the connection cannot be reused

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _overloaded(message: str) -> ApiError:
    return ApiError(503, message, type="server_error", code="overloaded", headers={"retry-after": "1"})


class _ClientGone(Exception):
    """The client closed its connection; nothing more can be sent."""


# ---------------------------------------------------------------- the body
def _nested_deeper_than(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the arrays and objects of a JSON text nest more than ``limit`` deep (brackets
    inside strings do not count). Linear and without recursion: C-speed passes over the bytes.

    Example:
        >>> _nested_deeper_than(b'[{"a": "[[[[["}]', 2), _nested_deeper_than(b"[" * 10**5, 64)
        (False, True)
    """
    if data.count(b"[") + data.count(b"{") <= limit:  # the usual body: no need to look closer
        return False
    # drop escaped backslashes, then escaped quotes: every quote left opens or closes a string
    plain = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(plain.split(b'"')[::2])
    steps = outside.translate(_BRACKET_STEP, _NOT_BRACKET)
    return max(itertools.accumulate(memoryview(steps).cast("b")), default=0) > limit


def _too_deep() -> ApiError:
    return ApiError(
        400,
        f"the body is nested too deeply (more than {MAX_JSON_DEPTH} levels of arrays and objects); "
        "send a flatter JSON object",
        code="nested_too_deeply",
    )


# ---------------------------------------------------------------- request fields
def _int(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, f"{name} must be an integer, got {json.dumps(value)}", param=name)
    if value < lo or (hi is not None and value > hi):
        span = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise ApiError(400, f"{name} must be {span}, got {value}; send a value in range", param=name)
    return value


def _float(
    body: dict[str, Any], name: str, default: float, lo: float, hi: float, lo_open: bool = False
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number, got {json.dumps(value)}", param=name)
    if value > hi or value < lo or (lo_open and value == lo):
        span = f"in ({lo:g}, {hi:g}]" if lo_open else f"between {lo:g} and {hi:g}"
        raise ApiError(400, f"{name} must be {span}, got {value:g}; send a value in range", param=name)
    return float(value)


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, got {json.dumps(value)}", param=name)
    return value


def _str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string, got {json.dumps(value)[:80]}", param=name)
    return value


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    if any(not s for s in stops):
        raise ApiError(400, "stop contains an empty string; remove it", param="stop")
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"stop has {len(stops)} strings, at most {MAX_STOP} are allowed", param="stop")
    return tuple(stops)


def _check_unsupported(body: dict[str, Any]) -> None:
    for name, off in _UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and value not in off:
            raise ApiError(
                400,
                f"{name}={json.dumps(value)[:60]} is not supported by this server; leave it out",
                param=name,
            )


def _content(value: Any, where: str) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for k, part in enumerate(value):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(
                    400, f"{where}[{k}] is a {kind!r} part; only text parts are supported", param=where
                )
            texts.append(part["text"])
        return "\n".join(texts)  # as vLLM joins text parts for a text-only model
    raise ApiError(400, f"{where} must be a string or a list of text parts", param=where)


# ---------------------------------------------------------------- prompts and sampling
def _chat_prompt(body: dict[str, Any], policy: Any) -> Prompt | str:
    """The prompt of a chat request: its ``messages``, rendered by ``policy``'s tokenizer only
    when the request renders the conversation as is (``add_generation_prompt=false``)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(
            400, 'messages is required: a non-empty list of {"role", "content"} objects', param="messages"
        )
    parsed = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with role and content", param="messages")
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ("system", "user", "assistant"):
            raise ApiError(
                400,
                f"messages[{i}].role {m.get('role')!r} is not supported; use system, user or assistant",
                param="messages",
            )
        parsed.append({"role": role, "content": _content(m.get("content"), f"messages[{i}].content")})
    cont = _bool(body, "continue_final_message", False)
    add = body.get("add_generation_prompt")
    if add is not None:
        add = _bool(body, "add_generation_prompt", True)
    if cont:
        if add:
            raise ApiError(
                400,
                "continue_final_message and add_generation_prompt cannot both be true; "
                "send add_generation_prompt=false",
                param="add_generation_prompt",
            )
        if parsed[-1]["role"] != "assistant" or len(parsed) < 2:
            raise ApiError(
                400,
                "continue_final_message needs a final assistant message after at least one other",
                param="messages",
            )
        return Prompt.chat(parsed[:-1], prefix=parsed[-1]["content"])
    if add is False:  # render the conversation as is; the model continues after it
        tok = policy.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(parsed, tokenize=False, add_generation_prompt=False)
        return "\n\n".join(m["content"] for m in parsed)
    return Prompt.chat(parsed)


def _raw_prompt(body: dict[str, Any], policy: Any) -> str | list[int]:
    """The prompt of a completions request: a string, or token ids within ``policy``'s vocabulary."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        vocab = len(policy.tokenizer)
        if not all(0 <= t < vocab for t in prompt):
            raise ApiError(400, f"prompt has token ids outside 0..{vocab - 1}", param="prompt")
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError(400, "send one prompt per request (a string or a list of token ids)", param="prompt")
    raise ApiError(400, "prompt is required: a string, or a list of token ids", param="prompt")


def _sampling(
    body: dict[str, Any], *, chat: bool, policy: Any, max_tokens_limit: int, max_n: int
) -> tuple[SamplingParams, int, bool, bool]:
    """``(SamplingParams, top_logprobs k, stream, include_usage)`` of a generation request."""
    limit = max_tokens_limit
    default = limit if chat else min(COMPLETIONS_MAX_TOKENS, limit)
    max_tokens = _int(body, "max_tokens", default, 1, limit)
    if chat:  # the newer name wins, as in vLLM
        max_tokens = _int(body, "max_completion_tokens", max_tokens, 1, limit)
    n = _int(body, "n", 1, 1, max_n)
    best_of = _int(body, "best_of", None, 1)
    if best_of is not None and best_of != n:
        raise ApiError(400, "best_of is not supported; leave it out (or equal to n)", param="best_of")
    temperature = _float(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    seed = _int(body, "seed", None, -(2**63), 2**63 - 1 - max_n)
    max_top = int(getattr(getattr(policy, "engine", None), "max_top_logprobs", 20))
    if chat:
        logprobs = _bool(body, "logprobs", False)
        top_k = _int(body, "top_logprobs", 0, 0, max_top) or 0
        if top_k and not logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true; send both", param="top_logprobs")
    else:
        k = _int(body, "logprobs", None, 0, max_top)
        logprobs, top_k = k is not None, k or 0
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    include_usage = bool(stream and options and _bool(options, "include_usage", False))
    try:
        params = SamplingParams(
            n=n,  # type: ignore[arg-type]
            max_tokens=max_tokens,  # type: ignore[arg-type]
            temperature=temperature,
            top_p=top_p,
            stop=_stops(body),
            seed=seed,
            logprobs=logprobs,
        )
    except ConfigError as e:
        raise ApiError(400, str(e)) from e
    return params, top_k, stream, include_usage


def _prm_request(body: dict[str, Any]) -> tuple[str, list[list[str]]]:
    """``/v1/prm/score``'s ``question`` and ``steps`` (candidates, each a list of step strings)."""
    question = body.get("question")
    if not isinstance(question, str):
        raise ApiError(400, "question is required: the problem text, a string", param="question")
    steps = body.get("steps")
    if not isinstance(steps, list) or not all(
        isinstance(c, list) and all(isinstance(s, str) for s in c) for c in steps
    ):
        raise ApiError(
            400,
            'steps is required: a list of candidates, each a list of step strings, e.g. [["2+3=5"]]',
            param="steps",
        )
    return question, steps
