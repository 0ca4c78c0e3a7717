"""``ponder serve``: the local policy (and a PRM) behind an OpenAI-compatible HTTP API.

Standard library only: a ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive, one thread
per connection (at most ``max_connections``), every request handed to the policy's continuous-batching engine
(``LocalPolicy.stream``), so concurrent clients share one batch. Endpoints:

* ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``;
* ``POST /v1/chat/completions``: system/user/assistant messages (text content, or lists of
  ``{"type": "text"}`` parts), ``max_tokens``/``max_completion_tokens``, ``temperature``,
  ``top_p``, ``n``, ``stop``, ``seed``, ``logprobs``/``top_logprobs``, ``stream`` (SSE) with
  ``stream_options.include_usage``, ``user``, and vLLM's ``continue_final_message`` /
  ``add_generation_prompt`` (continue a final assistant message: ``OpenAIPolicy`` sends a
  ``Prompt.assistant_prefix`` that way);
* ``POST /v1/completions``: a raw ``prompt`` (a string, a list of one string, or token ids),
  the same sampling fields, ``logprobs`` as an int (legacy format), ``stream``; no ``echo``;
* ``POST /v1/prm/score`` (with a PRM): ``{"question", "steps": [[step, ...], ...]}`` ->
  ``{"object": "prm.scores", "model", "scores", "usage": {"tokens"}}``; ``RemotePRM`` is
  its client.

Modules:
    * ``requests``: body fields, OpenAI's error shape (``ApiError``), prompts and sampling;
    * ``replies``: a generation's engine streams (``_Job``) and its answer (``_Reply``): JSON or
      SSE, logprobs, usage;
    * ``http``: the standard-library HTTP layer (``_HTTPServer``, ``_Handler``);
    * ``limits``: read deadlines, the 503 for connections over the cap, idleness checks;
    * ``server``: ``Server``: routing, the PRM endpoint, start and graceful shutdown.

Decisions:
    * Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a
      bad body (one line naming the field and the fix), 404 for an unknown path or model (a
      request without ``model`` gets the served one), 405, 411/413 (a body over
      ``max_body_bytes`` is never read), 503 with ``retry-after`` when the engine queue is
      full or the server is shutting down, 500 (logged) for anything unexpected.
    * Unsupported features with a non-default value (tools, penalties, ``logit_bias``,
      JSON mode, ``echo``, ``best_of``, ``suffix``) are rejected with a 400 rather than
      silently ignored; unknown extra fields are ignored.
    * Logprobs are the model's raw log-probabilities (before temperature and top-p), one per
      generated token including the EOS token and the token that completed a stop string,
      so ``len(logprobs) == usage.completion_tokens`` per choice, as vLLM reports them.
      Token strings are the token's own bytes decoded as UTF-8 (a partial character shows
      as U+FFFD; ``bytes`` has the exact bytes); special tokens show their literal text.
      Legacy ``text_offset`` counts from the start of the completion (there is no echo).
    * Defaults: chat ``max_tokens`` is ``max_tokens_limit`` (cut to the context),
      completions ``max_tokens`` 16 (as OpenAI and vLLM).
    * Fairness: the engine takes turns between clients; a request's client is its ``user``
      field when given, else its connection.
    * Disconnects: a streaming client that goes away is noticed at the next write, a waiting
      one by polling its socket; either way its sequences are cancelled.
    * Shutdown (``shutdown(grace)``): stop accepting, close idle keep-alive connections,
      let running requests finish for ``grace`` seconds, then cancel the rest (a streaming
      client gets an error event, a waiting one a 503), close every socket, join threads.
    * Limits: a body nested deeper than ``MAX_JSON_DEPTH`` (64) arrays and objects gets a 400
      before it is parsed (nothing later can recurse into a RecursionError). At most
      ``max_connections`` (128) connections are served, a thread each; when all are taken a new
      connection replaces the one idle longest (a kept-alive connection waiting for its next
      request: its client reconnects), and when none is idle it gets a 503 with ``retry-after``
      from one overflow thread, so a flood of sockets never adds threads. Deadlines, not
      per-read timeouts: the request line and headers within ``header_timeout`` (10 s), the
      body within ``body_timeout`` (30 s), a kept-alive connection's next request within
      ``idle_timeout`` (15 s); past one the connection closes, with a 408 when part of a
      request had come.
    * Security: no authentication; bound to loopback it refuses Host headers that are not
      loopback names (a web page cannot rebind its domain to the model). Bind elsewhere only
      behind something that authenticates.

Example:
    >>> import json, types, urllib.request
    >>> with Server(types.SimpleNamespace(name="demo")) as server:  # a stub: no model needed
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

from ponder.serve.requests import COMPLETIONS_MAX_TOKENS as COMPLETIONS_MAX_TOKENS  # as before the split
from ponder.serve.requests import MAX_JSON_DEPTH, ApiError
from ponder.serve.requests import MAX_STOP as MAX_STOP
from ponder.serve.server import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_N,
    DEFAULT_MAX_TOKENS_LIMIT,
    Server,
)

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_N",
    "DEFAULT_MAX_TOKENS_LIMIT",
    "MAX_JSON_DEPTH",
    "ApiError",
    "Server",
]
