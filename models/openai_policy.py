"""``OpenAIPolicy``: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, OpenAI) as a Policy.

One HTTP request per prompt, ``n`` choices per request; a batch runs concurrently (a
thread pool for ``generate``, ``asyncio.gather`` on ``AsyncOpenAI`` for ``agenerate``),
at most ``max_concurrency`` requests in flight per policy, results in prompt order.

Configuration, first found wins:
    base_url  argument, ``PONDER_OPENAI_BASE_URL``, ``OPENAI_BASE_URL``, else OpenAI's API.
    api_key   argument, ``OPENAI_API_KEY``, else ``"EMPTY"`` when a base URL is set (local
              servers need none); without either, ``ConfigError``.
    model     argument, ``PONDER_OPENAI_MODEL``; without either, ``ConfigError``.

Request decisions (what is sent and why):
    * Token limit: chat requests send ``max_tokens``. The OpenAI client also offers
      ``max_completion_tokens`` (OpenAI calls ``max_tokens`` deprecated), but ``max_tokens``
      is what every OpenAI-compatible server accepts (vLLM, SGLang, llama.cpp, Ollama, and
      OpenAI's non-reasoning models), while older vLLM/SGLang builds and llama.cpp ignore or
      reject ``max_completion_tokens``. OpenAI's reasoning models (o-series, gpt-5) reject
      ``max_tokens`` with a 400 that names ``max_completion_tokens``; on that exact error the
      policy switches to ``max_completion_tokens`` for good and resends the request once.
      ``/v1/completions`` only knows ``max_tokens``.
    * Assistant prefix (``Prompt.assistant_prefix``, continue a partial answer): plain
      OpenAI chat cannot express it. With ``use_chat=True`` the prefix is sent as a final
      assistant message with ``continue_final_message=True, add_generation_prompt=False``
      in the request body, which vLLM (and SGLang builds that support it) turn into "keep
      writing this message"; the reply is the continuation only. OpenAI itself rejects those
      fields: that 400 becomes a ``ConfigError`` telling you to use a vLLM/SGLang server or
      ``use_chat=False``. With ``use_chat=False`` the policy calls ``/v1/completions`` with
      ``prompt_formatter(prompt)`` as the raw prompt; the default formatter writes a
      role-tagged transcript ("System: ...", "User: ...", "Assistant: ") followed by the
      prefix. A custom formatter must append the prefix itself (e.g. via the model's chat
      template) and may want a stop string such as ``"\\nUser:"``.
    * Stop strings: sent to the server (at most 4, OpenAI's limit; more is a
      ``ConfigError``) and applied again client-side, because servers differ (some include
      the stop string, some ignore ``stop`` on some endpoints). A client-side cut makes the
      finish reason ``"stop"``; completion tokens still count what the server generated.
    * Finish reason: ``"length"`` stays ``"length"``; everything else (``stop``,
      ``tool_calls``, ``content_filter``, ``abort``, missing) becomes ``"stop"``.
    * Token accounting: ``prompt_tokens`` comes from ``usage.prompt_tokens``. The server
      reports one ``usage.completion_tokens`` for all ``n`` choices; it is split per choice
      exactly when logprobs give each choice's token count and they add up to the total,
      otherwise evenly (remainder to the first choices), so the row always sums to what
      the server billed. Servers that return no usage get an approximate count from the
      text (words and punctuation marks, ``ponder.models.fake.count_tokens``).
    * ``n``: servers that return fewer choices than asked (llama.cpp ignores ``n``) are
      asked again for the rest; with a seed, top-up requests use ``seed + 1``, ``seed + 2``...
      so they do not repeat the first sample.
    * Logprobs: ``logprobs=True`` on chat (``logprobs=1`` on completions); each
      Completion gets the chosen tokens' log-probabilities, cut to the kept text when a
      client-side stop trims it and the tokens line up with the text.
    * Retries: the client's own ``max_retries`` (429, 408, 409, 5xx, timeouts, connection
      errors, with backoff and ``Retry-After``); ``self.retries`` counts the retries taken.
      Client errors become ``ConfigError`` (bad key, unknown model, unsupported prefix) or
      ``BackendError`` (unreachable, timeout, rate limit, server failure), one line each.

Example (needs a running server):
    >>> from ponder.models import Prompt, SamplingParams
    >>> policy = OpenAIPolicy("Qwen/Qwen2.5-0.5B-Instruct", base_url="http://127.0.0.1:8000/v1")  # doctest: +SKIP
    >>> policy.generate([Prompt.user("2+2?")], SamplingParams(max_tokens=8))[0][0].text  # doctest: +SKIP
    '4'
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ponder.errors import BackendError, ConfigError, DependencyNotInstalled, PonderError
from ponder.models.control_tokens import CONTROL_TOKENS, neutralize_prompt
from ponder.models.fake import count_tokens
from ponder.models.types import (
    BasePolicy,
    Completion,
    Prompt,
    SamplingParams,
    apply_stop,
    check_prompts,
    first_stop,
)

try:
    import openai
except ImportError as e:  # pragma: no cover - depends on the install
    raise DependencyNotInstalled.for_extra("openai", "openai") from e
try:  # the HTTP library the installed client is built on: httpx2 (openai >= 3) or httpx
    from httpx2 import create_ssl_context
except ImportError:  # pragma: no cover - depends on the install
    from httpx import create_ssl_context

__all__ = ["OpenAIPolicy", "default_prompt_formatter"]

MAX_STOP = 4
_PREFIX_BODY = {"continue_final_message": True, "add_generation_prompt": False}
_OPENAI_URL = "https://api.openai.com/v1"


def default_prompt_formatter(prompt: Prompt) -> str:
    """A role-tagged transcript ending in an open assistant turn plus the prefix.

    Example:
        >>> default_prompt_formatter(Prompt.user("2+2?", system="Be brief.", prefix="The answer"))
        'System: Be brief.\\n\\nUser: 2+2?\\n\\nAssistant: The answer'
    """
    turns = [f"{m.role.capitalize()}: {m.content}" for m in prompt.messages]
    return "\n\n".join([*turns, f"Assistant: {prompt.assistant_prefix}"])


class OpenAIPolicy(BasePolicy):
    """A Policy served over the OpenAI API (``/v1/chat/completions`` or ``/v1/completions``).

    Args:
        model: the served model name; else ``PONDER_OPENAI_MODEL``.
        base_url: e.g. ``http://127.0.0.1:8000/v1``; else ``PONDER_OPENAI_BASE_URL``,
            ``OPENAI_BASE_URL``, else OpenAI's API.
        api_key: else ``OPENAI_API_KEY``, else ``"EMPTY"`` if a base URL is set.
        timeout: seconds per HTTP attempt (connect, read, write).
        max_retries: retries per request, done by the OpenAI client with backoff.
        max_concurrency: requests in flight at most, per policy (and per event loop).
        use_chat: chat endpoint (True) or the plain completions endpoint (False).
        extra_body: extra JSON fields for every request (e.g. vLLM's ``top_k``).
        prompt_formatter: with ``use_chat=False``, turns a Prompt (including its prefix)
            into the raw prompt string; defaults to ``default_prompt_formatter``.
        control_tokens: strings broken up in every message before it is sent, so that text
            never becomes a role marker on the server (``models.control_tokens``); the common
            chat templates' markers by default, add the served model's own if it has others.

    See the module docstring for exactly what is sent and how replies are accounted.
    """

    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        max_concurrency: int = 8,
        use_chat: bool = True,
        extra_body: dict[str, Any] | None = None,
        prompt_formatter: Callable[[Prompt], str] | None = None,
        control_tokens: Sequence[str] = CONTROL_TOKENS,
    ):
        super().__init__()
        model = model or os.environ.get("PONDER_OPENAI_MODEL") or None
        if not model:
            raise ConfigError(
                "no model given for the OpenAI policy; pass --model NAME or set PONDER_OPENAI_MODEL"
            )
        base_url = (
            base_url or os.environ.get("PONDER_OPENAI_BASE_URL") or os.environ.get("OPENAI_BASE_URL") or None
        )
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        if api_key is None:
            if base_url is None:
                raise ConfigError(
                    f"no API key for {_OPENAI_URL}; set OPENAI_API_KEY or --api-key (or --base-url for a local server)"
                )
            api_key = "EMPTY"  # vLLM / SGLang / llama.cpp without --api-key accept any key
        if not timeout or timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if prompt_formatter is not None and use_chat:
            raise ConfigError(
                "prompt_formatter only applies to the completions endpoint; pass use_chat=False too"
            )

        self.model = model
        self.base_url = (base_url or _OPENAI_URL).rstrip("/")
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_concurrency = int(max_concurrency)
        self.use_chat = use_chat
        self.extra_body = dict(extra_body or {})
        self.prompt_formatter = prompt_formatter or default_prompt_formatter
        self.control_tokens = tuple(control_tokens)
        self.requests = 0  # requests answered, each counted once however often it was retried
        self.retries = 0  # retries those requests took (a failed request's retries are in its error)
        self._api_key = api_key
        self._token_param = "max_tokens"
        self._lock = threading.Lock()
        self._thread_slots = threading.BoundedSemaphore(self.max_concurrency)
        self._ssl: Any = None
        self._sync_client: openai.OpenAI | None = None
        self._async_slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    # -- configuration ---------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        with self._lock:
            if self._ssl is None:  # loading the CA bundle costs ~30 ms: do it once per policy
                self._ssl = create_ssl_context()
        return {
            "api_key": self._api_key,
            "base_url": self.base_url,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
        }

    @property
    def _client(self) -> openai.OpenAI:
        client = self._sync_client
        if client is None:
            kwargs = self._client_kwargs()
            http = _SyncHttpClient(verify=self._ssl, timeout=self.timeout)
            client = self._sync_client = openai.OpenAI(**kwargs, http_client=http)
        return client

    def _new_async_client(self) -> openai.AsyncOpenAI:
        # One per agenerate call, closed at its end: httpx's async connection pool is bound
        # to the event loop that opened it, so a cached client would leak sockets (and break)
        # once that loop is closed (e.g. repeated asyncio.run). With the shared SSL context
        # a client costs well under a millisecond.
        kwargs = self._client_kwargs()
        http = openai.DefaultAsyncHttpxClient(verify=self._ssl, timeout=self.timeout)
        return openai.AsyncOpenAI(**kwargs, http_client=http)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "base_url": self.base_url,
            "endpoint": "chat" if self.use_chat else "completions",
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "max_concurrency": self.max_concurrency,
        }

    def __repr__(self) -> str:
        return f"OpenAIPolicy(model={self.model!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the sync client's connections (the policy stays usable; they reopen on demand).

        ``agenerate`` opens and closes its own connections on every call.
        """
        client, self._sync_client = self._sync_client, None
        if client is not None:
            client.close()

    def __enter__(self) -> OpenAIPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sync path --------------------------------------------------------------------

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        _check_stop(params)
        if len(prompts) == 1:
            return [self._one_sync(prompts[0], params)]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            futures = [pool.submit(self._one_sync, p, params) for p in prompts]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def _one_sync(self, prompt: Prompt, params: SamplingParams) -> list[Completion]:
        choices: list[_Choice] = []
        prompt_tokens: int | None = None
        for attempt in range(params.n):  # each round trip adds >= 1 choice or ends the loop
            kwargs = self._request(prompt, params, params.n - len(choices), attempt)
            with self._thread_slots:
                raw = self._send_sync(kwargs)
            got, p_tok = self._parse(raw, prompt, params)
            prompt_tokens = p_tok if prompt_tokens is None else prompt_tokens
            choices += got
            if len(choices) >= params.n or not got:
                break
        return self._finish(choices, prompt_tokens or 0, params)

    def _send_sync(self, kwargs: dict[str, Any]) -> Any:
        api = self._client.chat.completions if self.use_chat else self._client.completions
        try:
            raw = api.with_raw_response.create(**kwargs)
        except openai.BadRequestError as err:
            if not self._switch_token_param(err, kwargs):
                raise self._map_error(err, kwargs) from err
            try:
                raw = api.with_raw_response.create(**kwargs)
            except openai.OpenAIError as err2:
                raise self._map_error(err2, kwargs) from err2
        except openai.OpenAIError as err:
            raise self._map_error(err, kwargs) from err
        self._count(raw)
        return raw.parse()

    # -- async path -------------------------------------------------------------------

    async def agenerate(
        self, prompts: Sequence[Prompt], params: SamplingParams | None = None
    ) -> list[list[Completion]]:
        params = params or SamplingParams()
        checked = check_prompts(prompts)
        if not checked:
            return []
        _check_stop(params)
        slots = self._loop_slots()
        async with self._new_async_client() as client:
            tasks = [asyncio.ensure_future(self._one_async(client, slots, p, params)) for p in checked]
            try:
                rows = list(await asyncio.gather(*tasks))
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        self.usage.record(rows)
        return rows

    def _loop_slots(self) -> asyncio.Semaphore:
        """The concurrency limit shared by all agenerate calls on the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._async_slots
            if state is None or state[0] is not loop:
                state = self._async_slots = (loop, asyncio.Semaphore(self.max_concurrency))
        return state[1]

    async def _one_async(
        self, client: openai.AsyncOpenAI, slots: asyncio.Semaphore, prompt: Prompt, params: SamplingParams
    ) -> list[Completion]:
        choices: list[_Choice] = []
        prompt_tokens: int | None = None
        for attempt in range(params.n):  # each round trip adds >= 1 choice or ends the loop
            kwargs = self._request(prompt, params, params.n - len(choices), attempt)
            async with slots:
                raw = await self._send_async(client, kwargs)
            got, p_tok = self._parse(raw, prompt, params)
            prompt_tokens = p_tok if prompt_tokens is None else prompt_tokens
            choices += got
            if len(choices) >= params.n or not got:
                break
        return self._finish(choices, prompt_tokens or 0, params)

    async def _send_async(self, client: openai.AsyncOpenAI, kwargs: dict[str, Any]) -> Any:
        api = client.chat.completions if self.use_chat else client.completions
        try:
            raw = await api.with_raw_response.create(**kwargs)
        except openai.BadRequestError as err:
            if not self._switch_token_param(err, kwargs):
                raise self._map_error(err, kwargs) from err
            try:
                raw = await api.with_raw_response.create(**kwargs)
            except openai.OpenAIError as err2:
                raise self._map_error(err2, kwargs) from err2
        except openai.OpenAIError as err:
            raise self._map_error(err, kwargs) from err
        self._count(raw)
        return raw.parse()

    # -- shared: request building, parsing, accounting -----------------------------------

    def _request(self, prompt: Prompt, params: SamplingParams, n: int, attempt: int) -> dict[str, Any]:
        # the server's tokenizer is out of sight: break up the common templates' control tokens
        prompt = neutralize_prompt(prompt, self.control_tokens)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.seed is not None:
            kwargs["seed"] = params.seed + attempt
        body = dict(self.extra_body)
        if self.use_chat:
            kwargs[self._token_param] = params.max_tokens
            messages = prompt.to_messages()
            if prompt.assistant_prefix:
                messages.append({"role": "assistant", "content": prompt.assistant_prefix})
                body.update(_PREFIX_BODY)
            kwargs["messages"] = messages
            if params.logprobs:
                kwargs["logprobs"] = True
        else:
            kwargs["max_tokens"] = params.max_tokens
            kwargs["prompt"] = self.prompt_formatter(prompt)
            if params.logprobs:
                kwargs["logprobs"] = 1
        if body:
            kwargs["extra_body"] = body
        return kwargs

    def _switch_token_param(self, err: openai.BadRequestError, kwargs: dict[str, Any]) -> bool:
        """On OpenAI's "use max_completion_tokens" 400, switch for good; True to resend."""
        msg = _server_message(err)
        if not (self.use_chat and "max_tokens" in kwargs and "max_completion_tokens" in msg):
            return False
        with self._lock:
            self._token_param = "max_completion_tokens"
        kwargs["max_completion_tokens"] = kwargs.pop("max_tokens")
        return True

    def _count(self, raw: Any) -> None:
        with self._lock:
            self.requests += 1
            self.retries += int(getattr(raw, "retries_taken", 0) or 0)

    def _parse(self, resp: Any, prompt: Prompt, params: SamplingParams) -> tuple[list[_Choice], int]:
        raw_choices = sorted(resp.choices or [], key=lambda c: c.index or 0)
        choices = []
        for c in raw_choices:
            if self.use_chat:
                text = (c.message.content if c.message is not None else None) or ""
                tokens, lps = _chat_logprobs(c.logprobs)
            else:
                text = c.text or ""
                tokens, lps = _completion_logprobs(c.logprobs)
            choice = _Choice(text, c.finish_reason, tokens, lps)
            # vLLM says which stop string ended a choice in stop_reason, SGLang in matched_stop
            said = getattr(c, "stop_reason", None) or getattr(c, "matched_stop", None)
            choice.stop_reason = said if isinstance(said, str) and said in params.stop else None
            choices.append(choice)
        usage = getattr(resp, "usage", None)
        p_tok = getattr(usage, "prompt_tokens", None) if usage is not None else None
        c_tok = getattr(usage, "completion_tokens", None) if usage is not None else None
        if p_tok is None:
            p_tok = sum(count_tokens(m.content) for m in prompt.messages) + count_tokens(
                prompt.assistant_prefix
            )
        _split_completion_tokens(choices, c_tok)
        return choices, int(p_tok)

    def _finish(self, choices: list[_Choice], prompt_tokens: int, params: SamplingParams) -> list[Completion]:
        if len(choices) < params.n:
            raise BackendError(
                f"the server at {self.base_url} returned {len(choices)} of {params.n} completions for model "
                f"{self.model!r}; lower n or check the server's log"
            )
        out = []
        for c in choices[: params.n]:
            matched = first_stop(c.text, params.stop) or c.stop_reason
            text, cut = apply_stop(c.text, params.stop)
            finish = "stop" if cut or c.finish_reason != "length" else "length"
            lps = None
            if params.logprobs and c.logprobs is not None:
                lps = tuple(_cut_logprobs(c.tokens, c.logprobs, c.text, len(text)) if cut else c.logprobs)
            out.append(Completion(text, prompt_tokens, c.completion_tokens, finish, lps, matched))  # type: ignore[arg-type]
        return out

    # -- errors ---------------------------------------------------------------------------

    def _map_error(self, err: Exception, kwargs: dict[str, Any]) -> PonderError:
        url = self.base_url
        endpoint = "/chat/completions" if self.use_chat else "/completions"
        retried = f" after {self.max_retries} {'retry' if self.max_retries == 1 else 'retries'}"
        retried = retried if self.max_retries else ""
        if isinstance(err, openai.APITimeoutError):
            return BackendError(
                f"the server at {url} did not answer within {self.timeout:g} s{retried}; "
                "raise --timeout, lower max_tokens or check the server's load"
            )
        if isinstance(err, openai.APIConnectionError):
            return BackendError(f"cannot reach {url}; is the server running? (check --base-url{retried})")
        if not isinstance(err, openai.APIStatusError):
            return BackendError(f"the OpenAI client failed talking to {url}: {_one_line(str(err))}")
        status, msg = err.status_code, _server_message(err)
        if isinstance(err, (openai.AuthenticationError, openai.PermissionDeniedError)) or status in (
            401,
            403,
        ):
            return ConfigError(
                f"the server at {url} refused the API key (HTTP {status}); set OPENAI_API_KEY or --api-key"
            )
        if isinstance(err, openai.NotFoundError) or status == 404:
            code = str(getattr(err, "code", "") or "")
            if self.model in msg or "model" in msg.lower() or code == "model_not_found":
                return ConfigError(
                    f"model {self.model!r} is not served at {url} (HTTP 404: {msg}); "
                    f"list the served models with `curl {url}/models` and pass one with --model"
                )
            return ConfigError(
                f"{url}{endpoint} does not exist (HTTP 404: {msg}); check --base-url (it usually ends in /v1)"
                + ("" if self.use_chat else " and that the server offers /completions")
            )
        if isinstance(err, openai.RateLimitError) or status == 429:
            return BackendError(
                f"the server at {url} is rate-limiting requests (HTTP 429){retried}: {msg}; "
                "lower --max-concurrency, raise --max-retries or wait"
            )
        if (
            status == 400
            and "continue_final_message" in kwargs.get("extra_body", {})
            and ("continue_final_message" in msg or "add_generation_prompt" in msg)
        ):
            return ConfigError(
                f"the server at {url} does not support continuing an assistant prefix "
                "(continue_final_message); use a vLLM/SGLang server or use_chat=False"
            )
        if status >= 500:
            return BackendError(
                f"the server at {url} failed (HTTP {status}){retried}: {msg}; check the server's log"
            )
        return BackendError(
            f"the server at {url} rejected the request for model {self.model!r} (HTTP {status}): {msg}; "
            "check the sampling parameters and prompt length"
        )


class _SyncHttpClient(openai.DefaultHttpxClient):  # type: ignore[misc,valid-type]
    """The client's default HTTP pool, closed when garbage-collected (like the client's own)."""

    def __del__(self) -> None:
        try:
            if not self.is_closed:
                self.close()
        except Exception:
            pass


class _Choice:
    """One parsed choice, before stop strings and accounting are applied."""

    __slots__ = ("completion_tokens", "finish_reason", "logprobs", "stop_reason", "text", "tokens")

    def __init__(
        self, text: str, finish_reason: str | None, tokens: list[str] | None, logprobs: list[float] | None
    ):
        self.text = text
        self.finish_reason = finish_reason or "stop"
        self.tokens = tokens
        self.logprobs = logprobs
        self.completion_tokens = 0
        self.stop_reason: str | None = None


def _check_stop(params: SamplingParams) -> None:
    if len(params.stop) > MAX_STOP:
        raise ConfigError(
            f"OpenAI-compatible servers take at most {MAX_STOP} stop strings, got {len(params.stop)}; drop some"
        )


def _chat_logprobs(lp: Any) -> tuple[list[str] | None, list[float] | None]:
    content = getattr(lp, "content", None) if lp is not None else None
    if not content:
        return None, None
    return [t.token for t in content], [float(t.logprob) for t in content]


def _completion_logprobs(lp: Any) -> tuple[list[str] | None, list[float] | None]:
    values = getattr(lp, "token_logprobs", None) if lp is not None else None
    if not values:
        return None, None
    tokens = getattr(lp, "tokens", None)
    return (list(tokens) if tokens else None), [float(v) if v is not None else 0.0 for v in values]


def _cut_logprobs(tokens: list[str] | None, lps: list[float], full: str, keep: int) -> list[float]:
    """Keep the log-probs of the tokens that start inside the first ``keep`` characters."""
    if not tokens or len(tokens) != len(lps) or "".join(tokens) != full:
        return lps  # tokens do not spell the text (byte-level pieces): cannot align, keep all
    out, pos = [], 0
    for tok, lp in zip(tokens, lps, strict=True):
        if pos >= keep:
            break
        out.append(lp)
        pos += len(tok)
    return out


def _split_completion_tokens(choices: list[_Choice], total: int | None) -> None:
    if not choices:
        return
    if total is None:  # no usage from the server: approximate from the text
        for c in choices:
            c.completion_tokens = count_tokens(c.text)
        return
    exact = [len(c.logprobs) if c.logprobs is not None else None for c in choices]
    if all(e is not None for e in exact) and sum(exact) == total:  # type: ignore[arg-type]
        for c, e in zip(choices, exact, strict=True):
            c.completion_tokens = int(e)  # type: ignore[arg-type]
        return
    share, extra = divmod(int(total), len(choices))
    for i, c in enumerate(choices):
        c.completion_tokens = share + (1 if i < extra else 0)


def _server_message(err: Any) -> str:
    body = getattr(err, "body", None)
    msg = None
    if isinstance(body, dict):
        msg = body.get("message") or body.get("detail")
    elif isinstance(body, str) and body:
        msg = body
    return _one_line(str(msg if msg else getattr(err, "message", "") or err))


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
