"""A teacher behind any OpenAI-compatible chat API: GPT-4 class models, vLLM, llama.cpp, Ollama.

It writes the reflections as the paper's GPT-4 teacher did: it sees the observation and the
state's privileged facts (the next good action among them) and writes the analysis the reflection
model should learn to produce from the observation alone, without revealing the facts. For a
negative example it is told which move was wrong and asked to explain why and plan the recovery.

The prompts below are the *teacher's* instructions; what the players read is built by
``reflectrl.prompts`` only. Requests go through :class:`reflectrl.chat.ChatClient` (concurrency,
retries, disk cache, token and cost accounting). Replies are cleaned to one line; a reply that is
empty, cut off, too long or that names the hints is retried and, failing that, reported as failed
(:class:`TeacherError`), never returned as a reflection.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from jsonargparse.typing import SecretStr

from reflectrl.chat import ChatClient, ChatFailure, ChatReply, ChatRequest, ChatSettings, UnusableReply
from reflectrl.prompts import REFLECTION_MARKER, sanitize_line
from reflectrl.teachers.base import Mistake, ReflectionRequest, Teacher, TeacherError

log = logging.getLogger("reflectrl.teachers")

SYSTEM_PROMPT = (
    "You coach an agent that acts in a text environment. For the state you are shown, write the short "
    "analysis the agent should think before it acts: one or two sentences, at most {max_words} words, on "
    "one line, in the agent's own voice, ending with the move to make.\n"
    "You also get privileged hints about the state, such as the best next action. Use them so that the "
    "analysis is correct, but never reveal them: do not mention hints, an oracle, facts you were given or "
    "anything the agent cannot see; justify the move from what the observation shows.\n"
    "Reply with the analysis only."
)
POSITIVE_PROMPT = (
    "Observation:\n{observation}\n\n"
    "Privileged hints (never mention them):\n{facts}\n\n"
    "Write the analysis."
)
NEGATIVE_PROMPT = (
    "The agent just made a wrong move: it chose \"{action}\" in a state with these privileged hints:\n"
    "{facts_before}\n\n"
    "Observation now, after that move:\n{observation}\n\n"
    "Privileged hints about the current state (never mention them):\n{facts}\n\n"
    "That move was wrong. Write the analysis: first say briefly why \"{action}\" was a mistake, then plan "
    "what to do now, ending with the move to make."
)
DEFAULT_FORBIDDEN_WORDS = ("hint", "privileged", "oracle")
"""Words that give the hints away: a reflection containing one is retried."""


def render_facts(facts: dict[str, Any]) -> str:
    """Privileged facts as ``- key: value`` lines (JSON values; the env id is left out)."""
    return "\n".join(
        f"- {key}: {json.dumps(value, ensure_ascii=False, default=str)}" for key, value in facts.items() if key != "env"
    )


def reflection_messages(request: ReflectionRequest, max_words: int) -> list[tuple[str, str]]:
    """The (role, content) messages asking for one reflection (positive or negative example)."""
    system = SYSTEM_PROMPT.format(max_words=max_words)
    observation = request.observation.rstrip()
    mistake: Mistake | None = request.mistake
    if mistake is None:
        user = POSITIVE_PROMPT.format(observation=observation, facts=render_facts(request.facts))
    else:
        user = NEGATIVE_PROMPT.format(
            action=sanitize_line(mistake.action),
            facts_before=render_facts(mistake.facts_before),
            observation=observation,
            facts=render_facts(request.facts),
        )
    return [("system", system), ("user", user)]


def clean_reflection(text: str, max_chars: int, forbidden_words: Sequence[str]) -> str:
    """One line, without quotes or an echoed ``Analysis:`` marker; raises UnusableReply when the
    result is empty, longer than ``max_chars`` or names a forbidden word."""
    line = sanitize_line(text)
    marker = REFLECTION_MARKER.strip()
    if line.lower().startswith(marker.lower()):
        line = line[len(marker) :].strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'":
        line = line[1:-1].strip()
    if not line:
        raise UnusableReply("reflection is empty")
    if len(line) > max_chars:
        raise UnusableReply(f"reflection of {len(line)} characters (limit max_chars={max_chars})")
    for word in forbidden_words:
        if re.search(rf"\b{re.escape(word)}", line, flags=re.IGNORECASE):
            raise UnusableReply(f"reflection gives the hints away (says {word!r})")
    return line


class OpenAITeacher(Teacher):
    """Writes reflections with a chat model behind an OpenAI-compatible API.

    Args:
        model: model name as the server knows it (``gpt-4o``, ``Qwen/Qwen2.5-7B-Instruct``, ...).
        base_url: endpoint up to ``/v1`` (``http://localhost:8000/v1`` for vLLM,
            ``http://localhost:11434/v1`` for Ollama); None: ``OPENAI_BASE_URL`` or OpenAI's.
        api_key: API key; None: the ``OPENAI_API_KEY`` environment variable (local servers need
            none). Never logged, never in a repr, the manifest or the cache.
        temperature: sampling temperature (identical requests still get one reply: the cache).
        max_tokens: reply length limit sent to the server (None: not sent).
        extra_params: more request fields (``seed``, ``top_p``, ``max_completion_tokens``...).
        concurrency: requests in flight at once.
        max_attempts: tries per request before it counts as failed.
        backoff_base: seconds before the first retry (doubling, with jitter).
        backoff_cap: longest wait between tries (``Retry-After`` included).
        timeout: seconds per try.
        cache_dir: reply cache folder, keyed by the full request (None: no cache).
        max_words: length asked for in the prompt.
        max_chars: longest reflection accepted (longer replies are retried).
        forbidden_words: words that give the hints away (a reply containing one is retried).
        progress: show a progress bar with tokens and cost (on a terminal).
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: SecretStr | None = None,
        temperature: float = 0.7,
        max_tokens: int | None = 200,
        extra_params: dict[str, Any] | None = None,
        concurrency: int = 8,
        max_attempts: int = 6,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        timeout: float = 60.0,
        cache_dir: str | None = ".cache/reflectrl/openai",
        max_words: int = 40,
        max_chars: int = 300,
        forbidden_words: list[str] | None = None,
        progress: bool = True,
    ) -> None:
        self.settings = ChatSettings(
            model=model,
            base_url=base_url,
            api_key=api_key,
            temperature=temperature,
            max_tokens=max_tokens,
            extra_params=dict(extra_params or {}),
            concurrency=concurrency,
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            timeout=timeout,
            cache_dir=cache_dir,
            progress=progress,
        )
        self.max_words = int(max_words)
        self.max_chars = int(max_chars)
        self.forbidden_words = tuple(DEFAULT_FORBIDDEN_WORDS if forbidden_words is None else forbidden_words)
        self._client: ChatClient | None = None  # made on first use: parsing a config needs no network

    def __repr__(self) -> str:
        # What determines the reflections (the data manifest records it); no key, no tuning knobs.
        s = self.settings
        extra = f", extra_params={s.extra_params!r}" if s.extra_params else ""
        # Only when changed, so data made with the default keeps its identity (and its journal).
        if self.forbidden_words != tuple(DEFAULT_FORBIDDEN_WORDS):
            extra += f", forbidden_words={list(self.forbidden_words)!r}"
        return (
            f"OpenAITeacher(model={s.model!r}, base_url={s.base_url!r}, temperature={s.temperature!r}, "
            f"max_tokens={s.max_tokens!r}{extra}, max_words={self.max_words}, max_chars={self.max_chars})"
        )

    @property
    def client(self) -> ChatClient:
        if self._client is None:
            self._client = ChatClient(self.settings, name="teacher")
        return self._client

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"temperature": self.settings.temperature, **self.settings.extra_params}
        if self.settings.max_tokens is not None:
            params["max_tokens"] = self.settings.max_tokens
        return params

    def reflect(self, requests: Sequence[ReflectionRequest]) -> list[str]:
        """One reflection per request, same order; raises TeacherError (with the partial
        results) when some could not be written."""
        chat = [ChatRequest.of(reflection_messages(r, self.max_words), self._params()) for r in requests]
        return self._texts(chat, lambda text: clean_reflection(text, self.max_chars, self.forbidden_words), "reflections")

    def complete_texts(self, prompts: Sequence[str], system: str | None = None) -> list[str]:
        """Free-text completions (one line each) through the same robust path, e.g. to write
        natural-language tasks for an environment; raises TeacherError like ``reflect``."""
        head = [("system", system)] if system else []
        chat = [ChatRequest.of([*head, ("user", prompt)], self._params()) for prompt in prompts]
        return self._texts(chat, _nonempty_line, "texts")

    def _texts(self, chat: list[ChatRequest], validate: Any, what: str) -> list[str]:
        results = self.client.complete(chat, validate)
        failures = [(i, r) for i, r in enumerate(results) if isinstance(r, ChatFailure)]
        if failures:
            first = failures[0][1]
            partial = [r.text if isinstance(r, ChatReply) else None for r in results]
            raise TeacherError(
                f"teacher: {len(failures)} of {len(chat)} {what} failed after retries "
                f"(first: {first.attempts} tries, {first.reason})",
                partial,
            )
        return [r.text for r in results if isinstance(r, ChatReply)]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            log.info("teacher %s: %s", self.settings.model, self._client.usage.summary())


def _nonempty_line(text: str) -> str:
    line = sanitize_line(text)
    if not line:
        raise UnusableReply("reply is empty")
    return line
