"""The two players acting together: reflect on each state, then choose among enumerated actions.

A plain object (not a LightningModule) shared by evaluation and RL rollouts: it holds references
to the players' models and only runs them; whoever owns the models decides what is trained.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reflectrl import prompts
from reflectrl.lm import ChoiceBatch, choice_log_probs, encode_choice_batch, generate_reflections
from reflectrl.rollout import Decision

CHOICE_SCORINGS = ("sequence", "trie")


@dataclass
class ActingSettings:
    """How the players act."""

    reflect: bool = True
    """Ask the reflection player before every choice (False: the no-reflection baseline)."""
    reflection_max_tokens: int = 96
    """Longest reflection generated, in tokens."""
    max_prompt_tokens: int = 768
    """Prompts longer than this are cut from the left (the action list is kept)."""
    labels: str = "numbers"
    """How the policy answers: "numbers" (the action's number in the list, as in the paper) or
    "commands" (the action's own text, scored token by token in the same single forward pass)."""
    list_actions: bool = True
    """Show the valid actions in the policy prompt. False (labels "commands" only): the answer is
    still scored over the valid actions alone; AutoExplore's list repeats every listed name three
    times (cd / cat / id), which buries the one command the analysis names."""
    space_in_answer: bool = False
    """The prompt ends at "Choice:" and every answer starts with a space (labels "commands" only):
    the same text, tokenised by a subword tokenizer as the command is everywhere else in the
    prompt (" cd", " summary"; alone, "cd summary" starts "c", "d"), so it can be copied token
    for token from the analysis."""
    choice_scoring: str = "sequence"
    """How a multi-token answer is scored: "sequence" (its tokens' log-probability, the whole
    vocabulary competing at every token) or "trie" (at every token only the tokens that some valid
    answer continues with compete, so the probabilities of the valid answers still sum to one
    but an answer's tokens after its distinguishing prefix cost nothing). One-token labels
    score the same either way."""

    def __post_init__(self) -> None:
        if self.choice_scoring not in CHOICE_SCORINGS:
            raise ValueError(f"choice_scoring must be one of {CHOICE_SCORINGS}, got {self.choice_scoring!r}")
        prompts.check_answer_layout(self.labels, self.list_actions, self.space_in_answer)

    def choices(self, valid_actions: Sequence[str]) -> int | list[str]:
        """The answers the policy scores for one state (see ``prompts.answer_choices``)."""
        return prompts.answer_choices(valid_actions, self.labels, self.space_in_answer)

    def choice_batch(
        self, tokenizer: PreTrainedTokenizerBase, policy_prompts: Sequence[str], choices: Sequence[int | list[str]]
    ) -> ChoiceBatch:
        """Policy prompts and their answers (``choices``) laid out for scoring as these settings say."""
        return encode_choice_batch(
            tokenizer, list(policy_prompts), choices, self.max_prompt_tokens, trie=self.choice_scoring == "trie"
        )


class ReflectionCache:
    """Bounded LRU memo of the frozen reflection player's greedy output, keyed by its prompt.

    Greedy decoding of a frozen model is a pure function of the prompt, so a hit is exactly what
    generation would return. Its state is lists of strings (checkpoint-safe primitives).
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[str, str] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, prompt: str) -> str | None:
        value = self.entries.get(prompt)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
            self.entries.move_to_end(prompt)
        return value

    def put(self, prompt: str, reflection: str) -> None:
        self.entries[prompt] = reflection
        self.entries.move_to_end(prompt)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def state_dict(self) -> dict[str, list[str] | int]:
        return {"prompts": list(self.entries), "reflections": list(self.entries.values()),
                "hits": self.hits, "misses": self.misses}

    def load_state_dict(self, state: dict) -> None:
        self.entries = OrderedDict(zip(state["prompts"], state["reflections"], strict=True))
        self.hits, self.misses = int(state["hits"]), int(state["misses"])
        while len(self.entries) > self.capacity:  # a state saved with a larger capacity
            self.entries.popitem(last=False)


class TwoPlayerAgent:
    """Reflection player + policy player over text observations and valid-action lists."""

    def __init__(
        self,
        policy: PreTrainedModel,
        policy_tokenizer: PreTrainedTokenizerBase,
        reflector: PreTrainedModel | None,
        reflector_tokenizer: PreTrainedTokenizerBase | None,
        settings: ActingSettings,
        cache: ReflectionCache | None = None,
    ) -> None:
        if settings.reflect and reflector is None:
            raise ValueError("reflect=True needs a reflection model (model.init_args.reflector)")
        self.policy = policy
        self.policy_tokenizer = policy_tokenizer
        self.reflector = reflector
        self.reflector_tokenizer = reflector_tokenizer
        self.settings = settings
        self.cache = cache

    @torch.no_grad()
    def reflect(self, observations: Sequence[str]) -> list[str | None]:
        """Greedy reflections of the frozen reflection player (None for every state when off)."""
        if not self.settings.reflect:
            return [None] * len(observations)
        assert self.reflector is not None and self.reflector_tokenizer is not None
        reflection_prompts = [prompts.reflection_prompt(o) for o in observations]
        results: list[str | None] = [None] * len(observations)
        todo: dict[str, list[int]] = {}  # identical prompts in one batch are generated once
        for i, prompt in enumerate(reflection_prompts):
            cached = self.cache.get(prompt) if self.cache is not None else None
            if cached is None:
                todo.setdefault(prompt, []).append(i)
            else:
                results[i] = cached
        if todo:
            texts = generate_reflections(
                self.reflector,
                self.reflector_tokenizer,
                list(todo),
                max_new_tokens=self.settings.reflection_max_tokens,
                temperature=0.0,
            )
            for (prompt, indices), text in zip(todo.items(), texts, strict=True):
                if self.cache is not None:
                    self.cache.put(prompt, text)
                for i in indices:
                    results[i] = text
        return results

    def policy_prompts(
        self, observations: Sequence[str], reflections: Sequence[str | None], valid_actions: Sequence[Sequence[str]]
    ) -> list[str]:
        return [
            prompts.policy_prompt(
                o,
                r,
                list(a),
                labels=self.settings.labels,
                list_actions=self.settings.list_actions,
                space_in_answer=self.settings.space_in_answer,
            )
            for o, r, a in zip(observations, reflections, valid_actions, strict=True)
        ]

    def choice_log_probs(self, policy_prompts: Sequence[str], valid_actions: Sequence[Sequence[str]]) -> torch.Tensor:
        """[B, max_choices] log-probs over each row's valid actions (-inf elsewhere); keeps grad."""
        choices = [self.settings.choices(actions) for actions in valid_actions]
        batch = self.settings.choice_batch(self.policy_tokenizer, policy_prompts, choices)
        device = next(self.policy.parameters()).device
        return choice_log_probs(self.policy, batch.to(device))

    @torch.no_grad()
    def decide(
        self,
        observations: Sequence[str],
        valid_actions: Sequence[list[str]],
        greedy: bool = True,
        generator: torch.Generator | None = None,
    ) -> list[Decision]:
        """Reflect, then choose (argmax, or a sample from the masked distribution)."""
        reflections = self.reflect(observations)
        texts = self.policy_prompts(observations, reflections, valid_actions)
        was_training = self.policy.training
        self.policy.eval()
        try:
            log_probs = self.choice_log_probs(texts, valid_actions).float().cpu()
        finally:
            self.policy.train(was_training)
        if greedy:
            actions = log_probs.argmax(dim=-1)
        else:
            actions = torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(-1)
        return [
            Decision(action=int(a), extra={"reflection": r, "prompt": p, "log_prob": float(lp[a])})
            for a, r, p, lp in zip(actions.tolist(), reflections, texts, log_probs, strict=True)
        ]
