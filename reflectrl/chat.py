"""Robust requests to an OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, Ollama).

Used by the OpenAI teacher (data generation) and the prompted-LM baselines (evaluation). What it
adds to the ``openai`` client (whose own retries are switched off, so that one policy applies):

- **Concurrency**: up to ``concurrency`` requests in flight (threads; the client is thread-safe).
- **Retries** with exponential backoff and jitter on HTTP 408/409/429/5xx, timeouts and connection
  errors; ``Retry-After`` / ``retry-after-ms`` are honoured (up to ``backoff_cap``). A reply that
  cannot be used (not JSON, no choices, empty content, cut off by ``max_tokens``, refused by a
  content filter, or rejected by the caller's ``validate``) is retried the same way, then reported
  as failed: it is never returned as data.
- **Fatal errors** (HTTP 401/403/404: a bad key, no such model or endpoint) stop the whole batch
  at once: every other request would fail the same way.
- **A disk cache** keyed by a hash of the full request (model, messages, parameters) and the
  endpoint URL (not the key), one file per reply, written atomically: a rerun never pays twice.
- **Accounting**: requests, cache hits, retries, failures, tokens and (where the server reports
  it, e.g. ``usage.cost``) cost; a tqdm bar on a terminal shows them live.

The API key is held in memory only: never logged, never in a repr, never in the cache.
"""

from __future__ import annotations

import copy
import dataclasses
import email.utils
import hashlib
import inspect
import json
import logging
import math
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse.typing import SecretStr

from reflectrl.errors import ReflectRLError

log = logging.getLogger("reflectrl.chat")

RETRY_STATUSES = frozenset({408, 409, 429})
"""HTTP statuses worth retrying besides 5xx (timeout, conflict, rate limit)."""
FATAL_STATUSES = frozenset({401, 403, 404})
"""HTTP statuses that no retry and no other request can fix (key, permission, model/endpoint)."""
MAX_REPLY_BYTES = 16 * 2**20
"""Largest reply body read (a chat completion of a few hundred tokens is a few kB)."""
API_KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "no-key"
"""Sent when no key is configured: local servers ignore it (the openai client insists on one)."""


@dataclass
class ChatSettings:
    """Where and how to send chat requests (an OpenAI-compatible endpoint and a model)."""

    model: str
    """Model name as the server knows it (``gpt-4o``, ``Qwen/Qwen2.5-7B-Instruct``, ``llama3.1``)."""
    base_url: str | None = None
    """Endpoint up to ``/v1`` (``http://localhost:8000/v1``); None: ``OPENAI_BASE_URL`` or OpenAI."""
    api_key: SecretStr | None = field(default=None, repr=False)
    """API key; None: the ``OPENAI_API_KEY`` environment variable (local servers need none).
    Prefer the variable: a key in a config file is masked in every config reflectrl writes."""
    temperature: float = 0.0
    max_tokens: int | None = 256
    """Reply length limit sent as ``max_tokens`` (None: not sent; use ``extra_params`` for
    ``max_completion_tokens``). A reply cut off by it is unusable and retried."""
    extra_params: dict[str, Any] = field(default_factory=dict)
    """More request fields (``seed``, ``top_p``, ``max_completion_tokens``, ...); part of the cache key."""
    concurrency: int = 8
    """Requests in flight at once."""
    max_attempts: int = 6
    """Tries per request (the first included) before it counts as failed."""
    backoff_base: float = 1.0
    """Seconds before the first retry; doubles per retry (with jitter)."""
    backoff_cap: float = 60.0
    """Longest wait between tries, also for ``Retry-After``."""
    timeout: float = 60.0
    """Seconds per try before it counts as timed out: wall clock for the whole reply (a server
    that drips a byte at a time cannot hold a try longer)."""
    cache_dir: str | None = ".cache/reflectrl/chat"
    """Folder of the reply cache (None: no cache)."""
    progress: bool = True
    """Show a progress bar with tokens and cost (only on a terminal)."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ReflectRLError(f"chat: concurrency must be >= 1, got {self.concurrency}")
        if self.max_attempts < 1:
            raise ReflectRLError(f"chat: max_attempts must be >= 1, got {self.max_attempts}")
        if min(self.backoff_base, self.backoff_cap, self.timeout) < 0 or self.timeout == 0:
            raise ReflectRLError("chat: backoff_base, backoff_cap must be >= 0 and timeout > 0")

    def public(self) -> dict[str, Any]:
        """The settings without the API key (safe to log, save as hyperparameters or in a manifest)."""
        return {name: copy.deepcopy(getattr(self, name)) for name in self.__dataclass_fields__ if name != "api_key"}


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to get; ``params`` are the sampling fields (temperature, max_tokens...)."""

    messages: tuple[tuple[str, str], ...]
    """(role, content) pairs."""
    params: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def of(messages: Sequence[tuple[str, str]], params: dict[str, Any]) -> ChatRequest:
        return ChatRequest(tuple((str(r), str(c)) for r, c in messages), tuple(sorted(params.items())))

    def payload(self, model: str) -> dict[str, Any]:
        """The JSON body fields (model, messages, params) — also what the cache key hashes."""
        return {
            "model": model,
            "messages": [{"role": role, "content": content} for role, content in self.messages],
            **dict(self.params),
        }

    def key(self, model: str, endpoint: str = "") -> str:
        """Cache key: the request body and the endpoint. Two servers may serve different models
        under one name (vLLM's ``--served-model-name``), so one's replies must not stand in for
        the other's."""
        fields = {**self.payload(model), "endpoint": endpoint}
        canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class ChatReply:
    """A usable reply."""

    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    cached: bool = False


@dataclass
class ChatFailure:
    """A request that got no usable reply after every attempt."""

    reason: str
    attempts: int


ChatResult = ChatReply | ChatFailure
Validator = Callable[[str], str]
"""``validate(text) -> text to keep``; raises :class:`UnusableReply` to have the request retried."""


class UnusableReply(Exception):
    """A reply that arrived but cannot be used (retried like a transient error)."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Permanent(Exception):
    """An answer that a retry would only repeat (HTTP 400, 422: e.g. a prompt too long)."""


class ChatRequestError(ReflectRLError):
    """The server refused in a way no retry fixes (bad key, unknown model), or the batch was stopped."""


# ------------------------------------------------------------------------------- pure helpers
def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Wait before try ``attempt + 1`` (``attempt`` >= 1 tries done): base * 2**(attempt-1), capped,
    with "equal jitter" (half fixed, half random) so that concurrent retries spread out."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds the server asks to wait: ``retry-after-ms``, else ``Retry-After`` (seconds or an
    HTTP date); None when absent or unreadable."""
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            delay = float(milliseconds) / 1000
            if math.isfinite(delay):
                return max(delay, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        delay = float(value)
        # "nan" or "inf" parse as floats: unusable, like any other unreadable value
        return max(delay, 0.0) if math.isfinite(delay) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(when - (time.time() if now is None else now), 0.0)


def parse_completion(text: str, allow_cut_off: bool = False) -> ChatReply:
    """A ChatCompletion JSON body -> ChatReply; raises UnusableReply when it cannot be used.

    ``allow_cut_off``: a reply stopped by ``max_tokens`` is usable (a player's answer is read as
    far as it goes); otherwise it is not (teacher data must be complete).
    """
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise UnusableReply("malformed JSON reply") from None
    if not isinstance(body, dict):
        raise UnusableReply("reply is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise UnusableReply("reply has no choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise UnusableReply("reply has no message content")
    finish_reason = choice.get("finish_reason")
    if finish_reason == "length" and not allow_cut_off:
        raise UnusableReply("reply was cut off (finish_reason length: raise max_tokens)")
    if finish_reason == "content_filter":
        raise UnusableReply("reply was withheld by a content filter")
    if not content.strip():
        raise UnusableReply("reply is empty")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    cost = usage.get("cost", body.get("cost"))
    return ChatReply(
        text=content,
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        prompt_tokens=_as_int(usage.get("prompt_tokens")),
        completion_tokens=_as_int(usage.get("completion_tokens")),
        cost=_as_finite(cost),
    )


def _as_finite(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (JSON allows 1e999, NaN, 10**400)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _as_int(value: Any) -> int:
    number = _as_finite(value)
    return int(number) if number is not None and abs(number) < 2**63 else 0


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def resolve_api_key(api_key: SecretStr | str | None) -> str:
    """The key to send: the configured one, else ``OPENAI_API_KEY``, else a placeholder."""
    if isinstance(api_key, SecretStr):
        api_key = api_key.get_secret_value()
    key = (api_key or os.environ.get(API_KEY_ENV) or NO_KEY).strip()
    # A key read with `$(cat key.txt)` may carry a newline; inside a header it would make the
    # HTTP library raise with the header, key included, in its message.
    if not key.isprintable() or not key.isascii():
        raise ReflectRLError("the API key holds control or non-ASCII characters inside it: check how it was set")
    return key


# ------------------------------------------------------------------------------------- cache
class ReplyCache:
    """One JSON file per reply under ``folder/<key[:2]>/<key>.json``, written atomically.

    A file holds the request (model, messages, params) and the reply; never the key or the URL.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> ChatReply | None:
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            return ChatReply(**entry["reply"], cached=True)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            log.warning("chat: ignoring unreadable cache file %s", path)
            return None

    def put(self, key: str, payload: dict[str, Any], reply: ChatReply) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = {k: v for k, v in vars(reply).items() if k != "cached"}
        data = json.dumps({"request": payload, "reply": fields}, ensure_ascii=False, sort_keys=True)
        # Temp file + rename in the same folder: a kill never leaves a half-written entry.
        handle, temp = tempfile.mkstemp(prefix=f".{key[:8]}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(data)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


# ------------------------------------------------------------------------------------ client
@dataclass
class ChatUsage:
    """Running totals of one client."""

    requests: int = 0
    cached: int = 0
    attempts: int = 0
    retries: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cost_reported: bool = False

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, reply: ChatReply) -> None:
        self.requests += 1
        if reply.cached:
            self.cached += 1
            return  # paid for in an earlier run
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        if reply.cost is not None:
            self.cost += reply.cost
            self.cost_reported = True

    def postfix(self) -> str:
        """Short live summary for the progress bar: ``tokens=12.3k cost=$0.0123 cached=4 retries=2``."""
        parts = [f"tokens={_kilo(self.tokens)}"]
        if self.cost_reported:
            parts.append(f"cost=${self.cost:.4f}")
        parts += [f"cached={self.cached}", f"retries={self.retries}"]
        if self.failed:
            parts.append(f"failed={self.failed}")
        return " ".join(parts)

    def summary(self) -> str:
        cost = f", cost ${self.cost:.4f}" if self.cost_reported else ""
        return (
            f"{self.requests} requests ({self.cached} from the cache, {self.failed} failed, "
            f"{self.retries} retries), {self.prompt_tokens} prompt + {self.completion_tokens} completion tokens{cost}"
        )


def _kilo(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


class ChatClient:
    """Sends batches of chat requests robustly (see the module docstring)."""

    def __init__(self, settings: ChatSettings, name: str = "chat", allow_cut_off: bool = False) -> None:
        """``name`` prefixes messages and the progress bar; ``allow_cut_off``: see parse_completion."""
        import openai  # here: importing it takes a while and only network users need it

        self.settings = settings
        self.name = name
        self.allow_cut_off = allow_cut_off
        self._openai = openai
        self._client = openai.OpenAI(
            base_url=settings.base_url,
            api_key=resolve_api_key(settings.api_key),
            max_retries=0,  # ours apply instead (they also cover unusable replies)
            timeout=settings.timeout,
        )
        self.base_url = str(self._client.base_url).rstrip("/")
        # Body fields the SDK takes as arguments; any other (a server's own, e.g. vLLM's top_k)
        # goes in extra_body, where the SDK passes it through unchecked.
        self._sdk_fields = set(inspect.signature(self._client.chat.completions.create).parameters)
        self.cache = ReplyCache(settings.cache_dir) if settings.cache_dir else None
        self.usage = ChatUsage()
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._bar: Any = None
        # httpx logs every request at INFO; with hundreds of requests that drowns the run's log.
        for noisy in ("httpx", "httpx2", "openai"):
            if logging.getLogger(noisy).level == logging.NOTSET:
                logging.getLogger(noisy).setLevel(logging.WARNING)

    def __repr__(self) -> str:
        return f"ChatClient(model={self.settings.model!r}, base_url={self.base_url!r})"

    # ----------------------------------------------------------------------------- public
    def complete(self, requests: Sequence[ChatRequest], validate: Validator | None = None) -> list[ChatResult]:
        """One result per request, same order: a usable ChatReply (its text passed through
        ``validate``) or a ChatFailure. Raises ChatRequestError on a fatal server answer."""
        validate = validate or (lambda text: text)
        results: list[ChatResult | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}  # identical requests are sent once
        for index, request in enumerate(requests):
            todo.setdefault(request.key(self.settings.model, self.base_url), []).append(index)
        pending: dict[str, ChatRequest] = {}
        for key, indices in todo.items():
            cached = self._from_cache(key, validate)
            if cached is None:
                pending[key] = requests[indices[0]]
            else:
                for index in indices:
                    results[index] = cached
        self._bar_grow(len(todo))
        self._bar_advance(len(todo) - len(pending))
        if pending:
            keys = list(pending)
            answers = self._run_concurrently(
                [lambda stop, key=key: self._get(key, pending[key], validate, stop) for key in keys]
            )
            for key, answer in zip(keys, answers, strict=True):
                for index in todo[key]:
                    results[index] = answer
        return [result for result in results if result is not None]

    def _run_concurrently(self, jobs: list[Callable[[threading.Event], ChatResult]]) -> list[ChatResult]:
        """Run ``job(stop)`` for every job on up to ``concurrency`` threads; results in order.

        The threads are daemons and the caller waits in short slices, so Ctrl-C is seen at once
        and does not wait for requests in flight (their replies are lost, not half-written). The
        first exception (a fatal answer) sets ``stop`` for the others and is re-raised.
        """
        stop = threading.Event()
        results: list[ChatResult | None] = [None] * len(jobs)
        errors: list[BaseException] = []
        next_job = iter(range(len(jobs)))
        take = threading.Lock()

        def work() -> None:
            while not stop.is_set():
                with take:
                    index = next(next_job, None)
                if index is None:
                    return
                try:
                    results[index] = jobs[index](stop)
                except BaseException as error:  # handed to the caller's thread
                    errors.append(error)
                    stop.set()

        threads = [
            threading.Thread(target=work, name=f"{self.name}-{i}", daemon=True)
            for i in range(min(self.settings.concurrency, len(jobs)))
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.1)
        except BaseException:
            stop.set()  # Ctrl-C: no new tries; what finished is in the cache
            self.close()
            raise
        if errors:
            self.close()
            raise errors[0]
        return [result for result in results if result is not None]

    def close(self) -> None:
        """Close the progress bar (the client stays usable)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ---------------------------------------------------------------------------- internals
    def _from_cache(self, key: str, validate: Validator) -> ChatReply | None:
        if self.cache is None:
            return None
        reply = self.cache.get(key)
        if reply is None:
            return None
        try:
            reply.text = validate(reply.text)
        except UnusableReply:
            return None  # e.g. stricter validation than when it was cached: ask again
        with self._lock:
            self.usage.add(reply)
        return reply

    def _get(self, key: str, request: ChatRequest, validate: Validator, stop: threading.Event) -> ChatResult:
        """All tries of one request; raises only on a fatal answer or when the batch is stopped."""
        settings = self.settings
        payload = request.payload(settings.model)
        reason = ""
        for attempt in range(1, settings.max_attempts + 1):
            if stop.is_set():
                raise ChatRequestError(f"{self.name}: stopped")
            with self._lock:
                self.usage.attempts += 1
                self.usage.retries += attempt > 1
            retry_after = None
            try:
                reply = self._send(payload)
                # The cache keeps the raw text and validates it on the way out, like a fresh
                # reply: validating twice is not always the same as once.
                raw_text = reply.text
                reply.text = validate(raw_text)
            except _Permanent as error:
                return self._failed(str(error), attempt)
            except _Retryable as error:
                reason, retry_after = str(error), error.retry_after
            except UnusableReply as error:
                reason = str(error)
            else:
                if self.cache is not None:
                    self.cache.put(key, payload, dataclasses.replace(reply, text=raw_text))
                with self._lock:
                    self.usage.add(reply)
                self._bar_advance(1)
                return reply
            if attempt < settings.max_attempts:
                delay = backoff_delay(attempt, settings.backoff_base, settings.backoff_cap, self._rng)
                if retry_after is not None:
                    # At least what the server asked for (it will refuse again sooner).
                    delay = min(max(retry_after, delay), settings.backoff_cap)
                log.debug("%s: try %d failed (%s); retrying in %.2f s", self.name, attempt, reason, delay)
                if stop.wait(delay):
                    raise ChatRequestError(f"{self.name}: stopped")
        return self._failed(reason, settings.max_attempts)

    def _failed(self, reason: str, attempts: int) -> ChatFailure:
        with self._lock:
            self.usage.requests += 1
            self.usage.failed += 1
        self._bar_advance(1)
        # DEBUG: the caller reports failures (one line for the batch), not one line per request.
        log.debug("%s: request failed after %d tries: %s", self.name, attempts, reason)
        return ChatFailure(reason=reason, attempts=attempts)

    def _send(self, payload: dict[str, Any]) -> ChatReply:
        """One try. Raises _Retryable, UnusableReply, or ChatRequestError (fatal)."""
        openai = self._openai
        where = f"{self.base_url} (model {self.settings.model!r})"
        arguments = {name: value for name, value in payload.items() if name in self._sdk_fields}
        extra = {name: value for name, value in payload.items() if name not in self._sdk_fields}
        if extra:
            arguments["extra_body"] = extra
        deadline = time.monotonic() + self.settings.timeout
        try:
            # Streamed, so the try has a wall-clock deadline and a size bound; parsed by us (the
            # client's own parser would accept a broken reply).
            with self._client.chat.completions.with_streaming_response.create(**arguments) as raw:
                chunks: list[bytes] = []
                size = 0
                try:
                    for chunk in raw.iter_bytes():
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > MAX_REPLY_BYTES:
                            raise UnusableReply(f"reply larger than {MAX_REPLY_BYTES // 2**20} MiB")
                        if time.monotonic() > deadline:
                            raise _Retryable(f"timed out after {self.settings.timeout:g} s at {where}")
                except (UnusableReply, _Retryable):
                    raise
                except Exception as error:  # the HTTP library's own (connection lost, read timeout)
                    raise _Retryable(f"connection lost reading the reply from {where}: {_one_line(repr(error))}") from None
            text = b"".join(chunks).decode("utf-8", errors="replace")
        except openai.APITimeoutError:
            raise _Retryable(f"timed out after {self.settings.timeout:g} s at {where}") from None
        except openai.APIConnectionError as error:
            cause = _one_line(repr(error.__cause__)) if error.__cause__ else _one_line(str(error))
            raise _Retryable(f"cannot connect to {where}: {cause}") from None
        except openai.APIStatusError as error:
            status = error.status_code
            message = _one_line(getattr(error, "message", "") or str(error))
            if status in RETRY_STATUSES or status >= 500:
                raise _Retryable(f"HTTP {status} from {where}: {message}", parse_retry_after(error.response.headers)) from None
            if status in FATAL_STATUSES:
                hint = f" (is the API key right? set {API_KEY_ENV})" if status in (401, 403) else ""
                raise ChatRequestError(f"{self.name}: HTTP {status} from {where}: {message}{hint}") from None
            raise _Permanent(f"HTTP {status} from {where}: {message}") from None
        except openai.APIError as error:
            raise _Retryable(f"error from {where}: {_one_line(str(error))}") from None
        return parse_completion(text, self.allow_cut_off)

    # ------------------------------------------------------------------------- progress bar
    def _bar_grow(self, count: int) -> None:
        if not self.settings.progress:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            # disable=None: only on a terminal (a log file would fill with carriage returns).
            self._bar = tqdm(total=0, desc=self.name, unit="req", disable=None, dynamic_ncols=True)
        self._bar.total += count
        self._bar.refresh()

    def _bar_advance(self, count: int) -> None:
        with self._lock:
            if self._bar is not None and count:
                self._bar.update(count)
                self._bar.set_postfix_str(self.usage.postfix(), refresh=False)
