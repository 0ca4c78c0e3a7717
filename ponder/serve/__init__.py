"""``ponder serve``: any streaming policy (and a PRM) behind an OpenAI-compatible HTTP API.

FastAPI on uvicorn. The policy is a ``StreamingPolicy`` (``ponder.models``): ``LocalPolicy`` on
its continuous-batching engine (concurrent clients share one batch), ``ScriptedPolicy`` (tests,
demos), or anything with ``name``, ``render``, ``encode`` and ``stream``. Endpoints:

* ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``;
* ``POST /v1/chat/completions``: system/user/assistant (and ``developer``) messages (text
  content, or lists of ``{"type": "text"}`` parts), ``max_tokens``/``max_completion_tokens``,
  ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``, ``logprobs``/``top_logprobs``,
  ``stream`` (SSE) with ``stream_options.include_usage``, ``user``, and vLLM's
  ``continue_final_message`` / ``add_generation_prompt`` (continue a final assistant message:
  ``OpenAIPolicy`` sends a ``Prompt.assistant_prefix`` that way);
* ``POST /v1/completions``: a raw ``prompt`` (a string, a list of one string, or token ids),
  the same sampling fields, ``logprobs`` as an int (legacy format), ``stream``; no ``echo``;
* ``POST /v1/prm/score`` (with a PRM): ``{"question", "steps": [[step, ...], ...]}`` ->
  ``{"object": "prm.scores", "model", "scores", "usage": {"tokens"}}``; ``RemotePRM`` is
  its client.

Modules:
    * ``requests``: the bodies as pydantic models, OpenAI's error shape (``ApiError``);
    * ``replies``: a request's streams brought into the event loop (``Job``) and its answer
      (``Reply``): JSON or SSE, logprobs, usage;
    * ``app``: the FastAPI app: routes, body limits, errors, disconnects;
    * ``server``: ``Server``: the socket, uvicorn on a thread, graceful shutdown, and what the
      policy offers (a tokenizer, an engine queue).

Decisions:
    * Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a
      bad body, pydantic's validation errors included (one line naming the field, e.g.
      ``messages[0].content``, and the fix; never 422), 404 for an unknown path or model (a
      request without ``model`` gets the served one), 405, 408 (a body slower than
      ``body_timeout``), 413 (a body over ``max_body_bytes``; a declared one is never read),
      503 with ``retry-after`` when the policy cannot take more work (the engine queue is
      full, or ``stream`` raised ``BackendError``) or the server is shutting down, 500
      (logged) for anything unexpected. The one exception: past ``max_connections`` uvicorn
      itself answers a plain-text 503 before the app sees the request.
    * Bodies are strict: ``"n": true`` or ``"max_tokens": "8"`` are 400s, ``null`` means the
      default, unknown extra fields are ignored. Unsupported features with a non-default value
      (tools, penalties, ``logit_bias``, JSON mode, ``echo``, ``best_of``, ``suffix``) are
      rejected with a 400 rather than silently ignored. JSON nested deeper than pydantic's
      parser allows (200 levels) is a 400 ``invalid_json``, never a RecursionError.
    * Logprobs need a policy with a tokenizer (to name tokens): ``LocalPolicy`` gives the
      model's raw log-probabilities (before temperature and top-p), one per generated token
      including the EOS token and the token that completed a stop string, so
      ``len(logprobs) == usage.completion_tokens`` per choice, as vLLM reports them. Token
      strings are the token's own bytes decoded as UTF-8 (a partial character shows as U+FFFD;
      ``bytes`` has the exact bytes); legacy ``text_offset`` counts from the start of the
      completion. A policy without logprobs (``ScriptedPolicy``) answers a request for them
      with a 400 "gives no logprobs" rather than made-up numbers; the same for token-id prompts.
    * Defaults: chat ``max_tokens`` is ``max_tokens_limit`` (cut to the context),
      completions ``max_tokens`` 16 (as OpenAI and vLLM).
    * Fairness: the engine takes turns between clients; a request's client is its ``user``
      field when given, else its connection.
    * Disconnects: a client that goes away cancels its sequences, streaming (Starlette listens
      for ``http.disconnect`` while it streams) or waiting for the whole answer (the app
      listens the same way).
    * Shutdown (``shutdown(grace)``): stop accepting and close idle keep-alive connections
      (uvicorn's ``should_exit``), let running requests finish for ``grace`` seconds, then
      cancel the rest (a streaming client gets an error event, a waiting one a 503); then the
      server's thread ends. A second SIGINT/SIGTERM skips the rest of the grace.
    * Left to uvicorn (the old standard-library server did these itself): the connection cap
      (``max_connections`` -> ``limit_concurrency``; connections cost no thread now, and an
      idle one is no longer closed to make room), closing idle keep-alive connections
      (``idle_timeout`` -> ``timeout_keep_alive``) and the size of request headers (httptools'
      and h11's limits, ``h11_max_incomplete_event_size``). Dropped: the deadline for request
      headers (uvicorn has none; a connection that never sends a request stays open, counted
      in ``max_connections``) and the 411 for chunked request bodies (they are read now, within
      ``max_body_bytes``).
    * Security: no authentication; bound to loopback it refuses Host headers that are not
      loopback names (a web page cannot rebind its domain to the model). Bind elsewhere only
      behind something that authenticates.

Example:
    >>> import json, urllib.request
    >>> from ponder.models import ScriptedPolicy
    >>> with Server(ScriptedPolicy(["4"]), model_name="demo") as server:  # no model needed
    ...     json.load(urllib.request.urlopen(server.url + "/models"))["data"][0]["id"]
    'demo'

    With the real policy (see ``ponder serve --help``)::

    >>> from ponder.models import LocalPolicy  # doctest: +SKIP
    >>> server = Server(LocalPolicy(), port=8000).start()  # doctest: +SKIP
    >>> import openai  # doctest: +SKIP
    >>> client = openai.OpenAI(base_url=server.url, api_key="x")  # doctest: +SKIP
    >>> client.chat.completions.create(model=server.model_name, max_tokens=8,
    ...     messages=[{"role": "user", "content": "2+2?"}]).choices[0].message.content  # doctest: +SKIP
    '2+2 = 4'
    >>> server.shutdown()  # doctest: +SKIP
"""

from ponder.serve.requests import ApiError
from ponder.serve.server import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_N,
    DEFAULT_MAX_TOKENS_LIMIT,
    Server,
)

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_N",
    "DEFAULT_MAX_TOKENS_LIMIT",
    "ApiError",
    "Server",
]
