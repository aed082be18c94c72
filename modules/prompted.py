"""Prompted chat models as the players: the paper's prompted-LM baselines, ``test`` only.

    reflectrl test --config configs/taxi_prompted_baseline.yaml

Plays the evaluation episodes of the datamodule (e.g. ``OnlineEnvDataModule``'s ``evaluation``)
with a chat model behind an OpenAI-compatible API as the policy (and optionally as the
reflector), through :class:`reflectrl.chat_agent.ChatAgent`; the metrics and ``results.json``
are those of the trained models (``EnvEvaluation``). No trainable weights: ``fit`` is refused.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import lightning.pytorch as pl

from reflectrl.chat import ChatClient, ChatSettings
from reflectrl.chat_agent import ChatAgent
from reflectrl.datamodules.episodes import EpisodeBatch
from reflectrl.errors import ReflectRLError
from reflectrl.modules.evaluation import EnvEvaluation

log = logging.getLogger("reflectrl")

REFLECTION_MAX_TOKENS = 128
"""Reply limit of the reflector when it is the policy's model (``reflector`` not given)."""


def as_chat_settings(value: ChatSettings | dict[str, Any] | None) -> ChatSettings | None:
    """Accept ChatSettings or its dict form (Python callers)."""
    if value is None or isinstance(value, ChatSettings):
        return value
    return ChatSettings(**dict(value))


class PromptedAgentModule(pl.LightningModule):
    """A chat model (OpenAI, vLLM, llama.cpp, Ollama...) acting through the canonical prompts."""

    def __init__(
        self,
        policy: ChatSettings,
        reflector: ChatSettings | None = None,
        reflect: bool = False,
        seed: int = 0,
    ) -> None:
        """
        Args:
            policy: the chat model that picks the action (its reply is parsed into one).
            reflector: the chat model that writes the analysis; None: the policy's, with
                ``max_tokens`` = REFLECTION_MAX_TOKENS (when ``reflect``).
            reflect: ask for an analysis of every state before the choice (the paper's prompted
                baselines act without one).
            seed: seed of the random action taken after an unparseable reply.
        """
        super().__init__()
        self.policy_settings = as_chat_settings(policy)
        assert self.policy_settings is not None
        self.reflector_settings = as_chat_settings(reflector) if reflect else None
        if reflect and self.reflector_settings is None:
            # The policy's model, with room for an analysis (a choice needs only a few tokens).
            self.reflector_settings = dataclasses.replace(self.policy_settings, max_tokens=REFLECTION_MAX_TOKENS)
        self.reflect = reflect
        self.seed = seed
        # Hyperparameters are logged (hparams.yaml): the settings without the API key.
        self.save_hyperparameters(
            {
                "policy": self.policy_settings.public(),
                "reflector": self.reflector_settings.public() if self.reflector_settings else None,
                "reflect": reflect,
                "seed": seed,
            }
        )
        self.evaluation = EnvEvaluation("test")
        self._agent: ChatAgent | None = None

    def agent(self) -> ChatAgent:
        """The players, made on first use (parsing a config contacts no server)."""
        if self._agent is None:
            # A cut-off reply is still an answer: it is parsed as far as it goes.
            policy = ChatClient(self.policy_settings, name="policy", allow_cut_off=True)
            reflector = None
            if self.reflector_settings is not None:
                reflector = ChatClient(self.reflector_settings, name="reflector", allow_cut_off=True)
            self._agent = ChatAgent(policy, reflector, seed=self.seed)
        return self._agent

    # ------------------------------------------------------------------ test only
    def training_step(self, batch: Any, batch_idx: int) -> None:
        raise ReflectRLError("PromptedAgentModule has no trainable weights: use `reflectrl test`")

    def configure_optimizers(self) -> Any:
        raise ReflectRLError("PromptedAgentModule has no trainable weights: use `reflectrl test`, not `fit`")

    def test_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        if not isinstance(batch, EpisodeBatch):
            raise ReflectRLError(
                "PromptedAgentModule plays environment episodes: give the datamodule an `evaluation` "
                f"(got a {type(batch).__name__} batch)"
            )
        self.evaluation.play(batch, self.agent())

    def on_test_epoch_end(self) -> None:
        agent = self.agent()
        clients = [("policy", agent.policy)] + ([("reflector", agent.reflector)] if agent.reflector else [])
        extra: dict[str, Any] = {"model": type(self).__name__, "reflect": self.reflect,
                                 "policy_model": self.policy_settings.model}
        if agent.reflector is not None:
            extra["reflector_model"] = agent.reflector.settings.model
        self.evaluation.finish(self, extra)
        for name, client in clients:
            client.close()
            usage = client.usage
            self.log(f"test/{name}_tokens", float(usage.tokens), batch_size=1)
            if usage.cost_reported:
                self.log(f"test/{name}_cost", usage.cost, batch_size=1)
            log.info("prompted %s %s: %s", name, client.settings.model, usage.summary())
