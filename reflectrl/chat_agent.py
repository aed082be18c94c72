"""A prompted chat model as the players (the paper's prompted-LM baselines: Mistral, Llama 2, ...).

Same interface as :class:`reflectrl.agent.TwoPlayerAgent` for playing episodes (``decide``), same
canonical prompts (``reflectrl.prompts``): the chat model reads exactly what a trained player
reads, after a system message that says what to answer. Its free-text reply is mapped to an action
by :func:`reflectrl.prompts.parse_choice`.

**An unparseable reply** is an invalid choice: the decision is flagged (``invalid_choice_rate``
in the results) and the env is stepped with a random valid action, drawn from a generator seeded
by ``(seed, observation, reply)`` so that reruns are identical. In a dangerous env a random move
often ends the episode; the baseline gets no second try (retrying the same prompt at temperature
0 would give the same reply). Requests that fail after all retries stop the evaluation with a
one-line error: a silently skipped step would bias the metrics.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from reflectrl import prompts
from reflectrl.chat import ChatClient, ChatFailure, ChatReply, ChatRequest, ChatSettings, UnusableReply
from reflectrl.errors import ReflectRLError
from reflectrl.rollout import Decision


def chat_params(settings: ChatSettings) -> dict[str, object]:
    """Sampling fields of a request from the settings."""
    params: dict[str, object] = {"temperature": settings.temperature, **settings.extra_params}
    if settings.max_tokens is not None:
        params["max_tokens"] = settings.max_tokens
    return params


def fallback_action(seed: int, observation: str, reply: str, num_actions: int) -> int:
    """The random valid action taken after an unparseable reply (stable across processes)."""
    digest = hashlib.sha256(f"{seed}\x00{observation}\x00{reply}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big")).randrange(num_actions)


def _reflection_line(text: str) -> str:
    line = prompts.sanitize_line(text)
    marker = prompts.REFLECTION_MARKER.strip().lower()
    if line.lower().startswith(marker):
        line = line[len(marker) :].strip()
    if not line:
        raise UnusableReply("reflection is empty")
    return line


class ChatAgent:
    """Reflect (optional) and choose with chat models behind OpenAI-compatible APIs."""

    def __init__(self, policy: ChatClient, reflector: ChatClient | None = None, seed: int = 0) -> None:
        self.policy = policy
        self.reflector = reflector
        self.seed = seed

    def reflect(self, observations: Sequence[str]) -> list[str | None]:
        """One analysis line per observation (None for every state without a reflector)."""
        if self.reflector is None:
            return [None] * len(observations)
        params = chat_params(self.reflector.settings)
        requests = [
            ChatRequest.of(prompts.chat_messages(prompts.REFLECTION_CHAT_INSTRUCTION, prompts.reflection_prompt(o)), params)
            for o in observations
        ]
        return list(self._texts(self.reflector, requests, _reflection_line, "reflector"))

    def decide(self, observations: Sequence[str], valid_actions: Sequence[list[str]]) -> list[Decision]:
        """Reflect, ask the policy model, parse each reply into a valid action (see the module doc)."""
        reflections = self.reflect(observations)
        params = chat_params(self.policy.settings)
        texts = [
            prompts.policy_prompt(o, r, list(a)) for o, r, a in zip(observations, reflections, valid_actions, strict=True)
        ]
        requests = [ChatRequest.of(prompts.chat_messages(prompts.POLICY_CHAT_INSTRUCTION, t), params) for t in texts]
        replies = self._texts(self.policy, requests, lambda text: text, "policy")
        decisions = []
        for observation, actions, reply, reflection, text in zip(
            observations, valid_actions, replies, reflections, texts, strict=True
        ):
            choice = prompts.parse_choice(reply, actions)
            invalid = choice is None
            if choice is None:
                choice = fallback_action(self.seed, observation, reply, len(actions))
            decisions.append(
                Decision(action=choice, invalid=invalid, extra={"reply": reply, "reflection": reflection, "prompt": text})
            )
        return decisions

    @staticmethod
    def _texts(client: ChatClient, requests: list[ChatRequest], validate, player: str) -> list[str]:
        results = client.complete(requests, validate)
        for result in results:
            if isinstance(result, ChatFailure):
                raise ReflectRLError(
                    f"prompted {player} ({client.settings.model} at {client.base_url}): a request failed after "
                    f"{result.attempts} tries: {result.reason}"
                )
        return [result.text for result in results if isinstance(result, ChatReply)]
