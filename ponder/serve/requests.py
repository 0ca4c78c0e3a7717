"""Request bodies as pydantic models, OpenAI's error shape, and what a body asks for.

A body is parsed and checked in one step (``parse``): strict types (``"n": true`` or
``"max_tokens": "8"`` are errors), ``null`` meaning the default, unknown fields ignored, the
server's own limits (``Limits``) read from the validation context. Every problem becomes an
``ApiError`` whose message is one line naming the field and the fix; the app answers it as
``{"error": {"message", "type", "param", "code"}}``.

Example:
    >>> limits = Limits(max_tokens=64, max_n=4, max_top_logprobs=20)
    >>> body = parse(ChatBody, b'{"messages": [{"role": "user", "content": "hi"}], "n": 2, "stop": "Q:"}', limits)
    >>> params, top_k, include_usage = body.sampling(limits)
    >>> params.n, params.max_tokens, params.stop, top_k
    (2, 64, ('Q:',), 0)
    >>> try:
    ...     parse(ChatBody, b'{"messages": [{"role": "user", "content": "hi"}], "n": 9}', limits)
    ... except ApiError as e:
    ...     print(e.status, e.param, e.message)
    400 n n must be at most 4 on this server, got 9; send fewer
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, TypeVar, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ponder.errors import ConfigError
from ponder.models.types import Prompt, SamplingParams

MAX_STOP = 16
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions
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
# what a missing field should hold, for its error message
_EXPECTED = {
    "messages": 'a non-empty list of {"role", "content"} objects',
    "prompt": "a string, or a list of token ids",
    "question": "the problem text, a string",
    "steps": 'a list of candidates, each a list of step strings, e.g. [["2+3=5"]]',
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
        self.headers = dict(headers or {})
        if close:  # the request body was not read: the connection cannot be reused
            self.headers["connection"] = "close"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def overloaded(message: str) -> ApiError:
    return ApiError(503, message, type="server_error", code="overloaded", headers={"retry-after": "1"})


class Limits(NamedTuple):
    """The server's limits a body is checked against."""

    max_tokens: int
    max_n: int
    max_top_logprobs: int


# ---------------------------------------------------------------- parsing and its errors
def parse(model: type[M], data: bytes, limits: Limits) -> M:
    """``data`` (a JSON body) as ``model``, or an ``ApiError`` (400) naming the first problem."""
    try:
        return model.model_validate_json(data, strict=True, context=limits)
    except ValidationError as e:
        raise from_validation(e.errors(include_url=False)) from None


def _param(loc: tuple[int | str, ...]) -> str | None:
    """``("messages", 0, "content")`` -> ``"messages[0].content"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or None


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def from_validation(errors: Sequence[Any]) -> ApiError:
    """The first of pydantic's validation errors as a one-line 400 naming the field and the fix."""
    err = errors[0]
    kind, msg, param = err["type"], err["msg"], _param(err["loc"])
    if kind == "json_invalid":
        why = msg.removeprefix("Invalid JSON: ")
        return ApiError(400, f"the body is not valid JSON ({why}); send a JSON object", code="invalid_json")
    if param is None:
        return ApiError(400, "the body must be a JSON object", code="invalid_json")
    if kind == "missing":
        hint = _EXPECTED.get(param)
        return ApiError(400, f"{param} is required" + (f": {hint}" if hint else "; add it"), param=param)
    if kind == "value_error":  # our validators' words, about the field by its own name
        msg, own = msg.removeprefix("Value error, "), str(err["loc"][-1])
        said = param + msg[len(own) :] if msg.startswith(own) else f"{param}: {msg}"
        return ApiError(400, said, param=param)
    if kind == "too_short":
        return ApiError(400, f"{param} is empty; send at least one", param=param)
    fix = "send one of those" if kind == "literal_error" else "send a valid value"
    if kind.startswith(("greater_than", "less_than")):
        fix = "send a value in range"
    said = (
        msg.replace("Input should be", "must be", 1)
        if msg.startswith("Input should be")
        else f"is invalid ({msg})"
    )
    return ApiError(400, f"{param} {said}, got {_show(err['input'])}; {fix}", param=param)


# ---------------------------------------------------------------- the bodies
_STRICT = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)
M = TypeVar("M", bound=BaseModel)


class _Model(BaseModel):
    model_config = _STRICT

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class StreamOptions(_Model):
    include_usage: bool = False


class ChatMessage(_Model):
    role: Literal["system", "user", "assistant", "developer"]
    content: Any

    @field_validator("content")
    @classmethod
    def _text(cls, value: Any) -> str:
        """A string, or a list of ``{"type": "text", "text": ...}`` parts (joined by newlines, as vLLM
        does for a text-only model)."""
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("content must be a string or a list of text parts")
        for k, part in enumerate(value):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"content[{k}] is a {kind!r} part; only text parts are supported, send text")
        return "\n".join(part["text"] for part in value)


class _Generate(_Model):
    """The fields of both generation endpoints."""

    model: str | None = None
    n: int = Field(1, ge=1)
    best_of: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: Any = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logit_bias: Any = None

    @field_validator("frequency_penalty", "presence_penalty", "logit_bias", "tools", "functions",
                     "tool_choice", "function_call", "response_format", "suffix", "echo",
                     check_fields=False)  # fmt: skip
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and value not in _UNSUPPORTED[str(info.field_name)]:
            raise ValueError(
                f"{info.field_name}={_show(value)} is not supported by this server; leave it out"
            )
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: Any) -> tuple[str, ...]:
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("stop must be a string or a list of strings")
        if any(not s for s in stops):
            raise ValueError("stop contains an empty string; remove it")
        if len(stops) > MAX_STOP:
            raise ValueError(f"stop has {len(stops)} strings, at most {MAX_STOP} are allowed; send fewer")
        return tuple(stops)

    @field_validator("n", "max_tokens", "max_completion_tokens", "top_logprobs", "logprobs", "seed",
                     check_fields=False)  # fmt: skip
    @classmethod
    def _within_limits(cls, value: Any, info: ValidationInfo) -> Any:
        limits = cast(Limits, info.context)
        if not isinstance(value, int) or isinstance(value, bool):
            return value  # a chat ``logprobs`` flag
        name = info.field_name
        most = {"n": limits.max_n, "max_tokens": limits.max_tokens, "max_completion_tokens": limits.max_tokens,
                "top_logprobs": limits.max_top_logprobs, "logprobs": limits.max_top_logprobs}.get(str(name))  # fmt: skip
        if name == "seed":  # sample i draws from seed + i
            if not -(2**63) <= value <= 2**63 - 1 - limits.max_n:
                raise ValueError(f"seed must fit in 64 bits, got {value}; send a smaller seed")
        elif most is not None and value > most:
            raise ValueError(f"{name} must be at most {most} on this server, got {value}; send fewer")
        elif value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}; send a value in range")
        return value

    def _sampling(self, max_tokens: int | None, default: int, logprobs: bool, top_k: int) -> SamplingParams:
        if self.best_of is not None and self.best_of != self.n:
            raise ApiError(400, "best_of is not supported; leave it out (or equal to n)", param="best_of")
        try:
            return SamplingParams(
                n=self.n,
                max_tokens=max_tokens or default,
                temperature=self.temperature,
                top_p=self.top_p,
                stop=self.stop or (),
                seed=self.seed,
                logprobs=logprobs,
            )
        except ConfigError as e:
            raise ApiError(400, str(e)) from e

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatBody(_Generate):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    continue_final_message: bool = False
    add_generation_prompt: bool | None = None
    tools: Any = None
    functions: Any = None
    tool_choice: Any = None
    function_call: Any = None
    response_format: Any = None

    def sampling(self, limits: Limits) -> tuple[SamplingParams, int, bool]:
        """``(SamplingParams, top_logprobs k, include_usage)``; ``max_tokens`` defaults to the limit."""
        top_k = self.top_logprobs or 0
        if top_k and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true; send both", param="top_logprobs")
        max_tokens = self.max_completion_tokens or self.max_tokens  # the newer name wins, as in vLLM
        return self._sampling(max_tokens, limits.max_tokens, self.logprobs, top_k), top_k, self.include_usage

    def prompt(self, as_is: Callable[[list[dict[str, str]]], str]) -> Prompt | str:
        """The prompt: the messages as a chat ``Prompt`` (its final assistant message continued with
        ``continue_final_message``), or with ``add_generation_prompt=false`` the conversation
        rendered ``as_is`` (text the model continues after)."""
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content}
                    for m in self.messages]  # fmt: skip
        if self.continue_final_message:
            if self.add_generation_prompt:
                raise ApiError(
                    400,
                    "continue_final_message and add_generation_prompt cannot both be true; "
                    "send add_generation_prompt=false",
                    param="add_generation_prompt",
                )
            if messages[-1]["role"] != "assistant" or len(messages) < 2:
                raise ApiError(
                    400,
                    "continue_final_message needs messages that end with an assistant message after another",
                    param="messages",
                )
            return Prompt.chat(messages[:-1], prefix=messages[-1]["content"])
        if self.add_generation_prompt is False:
            return as_is(messages)
        return Prompt.chat(messages)


class CompletionBody(_Generate):
    """``POST /v1/completions``: one raw prompt (a string, a list of one string, or token ids)."""

    prompt: Any
    logprobs: int | None = None
    suffix: Any = None
    echo: Any = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: Any) -> str | list[int]:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
            value = value[0]  # a batch of one
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value and all(type(t) is int for t in value):
            return value
        if isinstance(value, list) and len(value) > 1 and all(isinstance(p, (str, list)) for p in value):
            raise ValueError(f"prompt has {len(value)} prompts; send one per request (a string or token ids)")
        raise ValueError("prompt must be a non-empty string, or a list of token ids")

    def sampling(self, limits: Limits) -> tuple[SamplingParams, int, bool]:
        """``(SamplingParams, top_logprobs k, include_usage)``; ``max_tokens`` defaults to 16."""
        default = min(COMPLETIONS_MAX_TOKENS, limits.max_tokens)
        params = self._sampling(self.max_tokens, default, self.logprobs is not None, self.logprobs or 0)
        return params, self.logprobs or 0, self.include_usage


class PRMBody(_Model):
    """``POST /v1/prm/score``: a question and candidates, each a list of steps."""

    model: str | None = None
    question: str
    steps: list[list[str]]
