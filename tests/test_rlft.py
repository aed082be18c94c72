"""RLFTModule behaviour: masked sampling, on-policy rollouts, exact resume, curriculum, LoRA, cache.

Everything runs on CPU with the embedded 2-layer, 32-wide GPT-2 over the byte tokenizer. The
reflection and policy players are built with different ``init_seed``s and exported to folders,
so the module loads them by path exactly as the shipped config does. Episodes are short
(``horizon`` 4) and reflections are 4 tokens, to keep each rollout batch well under a second.
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import run_main
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from reflectrl.agent import ActingSettings, ReflectionCache
from reflectrl.backbone import BackboneConfig, LoraSettings, build_backbone, export_backbone
from reflectrl.datamodules.episodes import EnvEvalConfig, EpisodeBatches
from reflectrl.datamodules.online import OnlineEnvDataModule, RolloutRequest
from reflectrl.errors import ReflectRLError
from reflectrl.lm import generate_reflections
from reflectrl.modules.curriculum import CurriculumCallback
from reflectrl.modules.rlft import RLFTModule, RLSettings
from reflectrl.prompts import REFLECTION_MARKER, reflection_prompt

TINY = {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "max_positions": 512}
HORIZON = 4
EPISODES = 4
REFLECTION_TOKENS = 4
TIMING_METRICS = {"charts/decisions_per_second", "charts/rollout_seconds", "charts/update_seconds"}


# ---------------------------------------------------------------------------------------------- helpers
# One intra-op thread for this module's tiny models (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def players(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Tiny reflection and policy players exported to folders (different initial weights)."""
    root = tmp_path_factory.mktemp("players")
    paths = {}
    for name, seed in (("reflection", 11), ("policy", 22)):
        model, tokenizer = build_backbone(BackboneConfig(**TINY, init_seed=seed))
        paths[name] = str(export_backbone(model, tokenizer, root / name))
    return SimpleNamespace(**paths)


def make_module(
    players: SimpleNamespace,
    *,
    reflect: bool = True,
    lora: LoraSettings | None = None,
    cache_size: int = 1000,
    lr: float = 3e-3,
    reflection_tokens: int = REFLECTION_TOKENS,
    **rl: Any,
) -> RLFTModule:
    return RLFTModule(
        backbone=BackboneConfig(name_or_path=players.policy, lora=lora),
        reflector=BackboneConfig(name_or_path=players.reflection) if reflect else None,
        acting=ActingSettings(
            reflect=reflect, reflection_max_tokens=reflection_tokens, max_prompt_tokens=512
        ),
        rl=RLSettings(**rl),
        lr=lr,
        reflection_cache_size=cache_size,
        seed=7,
    )


def make_datamodule(
    stage: str = "pickup", horizon: int = HORIZON, episodes: int = EPISODES
) -> OnlineEnvDataModule:
    return OnlineEnvDataModule(
        env_kwargs={"horizon": horizon}, stage=stage, split="train", episodes_per_batch=episodes, seed=3
    )


class MemoryLogger(Logger):
    """Keeps every logged metric, keyed by the logger step (one per rollout batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[int, dict[str, float]] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        assert step is not None
        self.records.setdefault(step, {}).update({k: float(v) for k, v in metrics.items()})


def checksum(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, parameter in module.named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Recorder(pl.Callback):
    """Parameter checksums around each update, and the global step after each rollout batch."""

    def __init__(self) -> None:
        self.initial: str | None = None
        self.after_update: list[str] = []
        self.global_steps: list[int] = []
        self.stages: list[str] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = checksum(pl_module.model)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.after_update.append(checksum(pl_module.model))
        self.global_steps.append(trainer.global_step)
        self.stages.append(outputs["stage"])


def record_rollouts(module: RLFTModule) -> list[str]:
    """Wrap ``module.rollout`` to record the checksum of the policy weights that actually act in
    each rollout (taken at every ``decide`` call; they must also be the weights at its start)."""
    seen: list[str] = []
    original_rollout, original_agent = module.rollout, module.agent
    acted: list[str] = []

    def agent(*args: Any, **kwargs: Any) -> Any:
        player = original_agent(*args, **kwargs)
        decide = player.decide

        def recording_decide(*args: Any, **kwargs: Any) -> Any:
            acted.append(checksum(player.policy))
            return decide(*args, **kwargs)

        player.decide = recording_decide  # type: ignore[method-assign]
        return player

    def rollout(request: RolloutRequest) -> Any:
        acted.clear()
        at_start = checksum(module.model)
        result = original_rollout(request)
        assert acted, "the rollout never asked the policy"
        consistent = set(acted) == {at_start}
        seen.append(at_start if consistent else f"acted with {len(set(acted))} other weights")
        return result

    module.agent = agent  # type: ignore[method-assign]
    module.rollout = rollout  # type: ignore[method-assign]
    return seen


def make_trainer(
    root: Path,
    *,
    batches: int,
    logger: Logger | None = None,
    callbacks: list[pl.Callback] | None = None,
    checkpoint_every: int | None = None,
    max_steps: int = -1,
) -> pl.Trainer:
    callbacks = list(callbacks or [])
    if checkpoint_every is not None:
        callbacks.append(
            ModelCheckpoint(
                dirpath=root / "checkpoints",
                every_n_train_steps=checkpoint_every,
                save_top_k=-1,
                save_last=True,
            )
        )
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        max_steps=max_steps,
        limit_train_batches=batches,  # an int: the online stream has no length (lightning-notes P1)
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_checkpointing=checkpoint_every is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )


def comparable(record: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in record.items() if k not in TIMING_METRICS}


# ---------------------------------------------------------------------------------------------- masked choice
@pytest.mark.parametrize("reflect", [False, True])
def test_sampled_choices_are_always_valid(players: SimpleNamespace, reflect: bool) -> None:
    module = make_module(players, reflect=reflect)
    agent = module.agent()
    observations = ["state A: two doors", "state B: a 6-way junction", "state C: a dozen exits"]
    valid_actions = [[f"action {i}" for i in range(n)] for n in (2, 6, 12)]
    obs, acts = observations * 8, valid_actions * 8
    generator = torch.Generator().manual_seed(0)
    counts = [torch.zeros(len(a), dtype=torch.long) for a in valid_actions]
    for _ in range(6):
        decisions = agent.decide(obs, acts, greedy=False, generator=generator)
        assert len(decisions) == len(obs)
        for i, (decision, actions) in enumerate(zip(decisions, acts, strict=True)):
            assert 0 <= decision.action < len(actions)
            assert math.isfinite(decision.extra["log_prob"]) and decision.extra["log_prob"] <= 0.0
            counts[i % 3][decision.action] += 1
    # sampling, not argmax: the 2-way state sees both actions over 48 draws of a near-uniform policy
    assert (counts[0] > 0).all()
    assert sum(int(c.sum()) for c in counts) == 6 * len(obs)

    # the masked distribution: a proper distribution over the valid labels, -inf elsewhere
    texts = agent.policy_prompts(observations, agent.reflect(observations), valid_actions)
    with torch.no_grad():
        log_probs = agent.choice_log_probs(texts, valid_actions)
    assert log_probs.shape == (3, 12)
    for row, n in zip(log_probs, (2, 6, 12), strict=True):
        assert torch.isfinite(row[:n]).all() and torch.isneginf(row[n:]).all()
        assert row[:n].exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_rollout_log_probs_match_the_training_scores(players: SimpleNamespace) -> None:
    """The log-prob stored at acting time is what the update recomputes with the same weights (PPO ratio 1)."""
    module = make_module(players, reflect=False, algorithm="ppo", baseline="critic")
    episodes, stats = module.rollout(RolloutRequest(make_datamodule("full")))
    transitions = [t for e in episodes for t in e.transitions]
    assert stats.decisions == len(transitions) > 0 and len(episodes) == EPISODES
    prompts = [t.decision.extra["prompt"] for t in transitions]
    with torch.no_grad():
        all_log_probs, values = module._score(prompts, [len(t.valid_actions) for t in transitions])
    assert values is not None and values.shape == (len(transitions),)
    actions = torch.tensor([t.decision.action for t in transitions])
    recomputed = all_log_probs.gather(1, actions[:, None]).squeeze(1)
    stored = torch.tensor([t.decision.extra["log_prob"] for t in transitions])
    torch.testing.assert_close(recomputed, stored, atol=1e-5, rtol=0)


def test_reflector_is_needed_only_when_reflecting(players: SimpleNamespace) -> None:
    with pytest.raises(ReflectRLError, match="config key 'model.init_args.reflector': required"):
        RLFTModule(
            backbone=BackboneConfig(name_or_path=players.policy),
            reflector=None,
            acting=ActingSettings(reflect=True),
        )
    # reflect: false with a reflector configured never builds it
    module = RLFTModule(
        backbone=BackboneConfig(name_or_path=players.policy),
        reflector=BackboneConfig(name_or_path=players.reflection),
        acting=ActingSettings(reflect=False),
    )
    episodes, _ = module.rollout(RolloutRequest(make_datamodule()))
    assert module._reflector is None and module.reflector_model() == (None, None)
    assert all(t.decision.extra["reflection"] is None for e in episodes for t in e.transitions)


# ---------------------------------------------------------------------------------------------- a recorded run
@dataclass
class Run:
    module: RLFTModule
    datamodule: OnlineEnvDataModule
    trainer: pl.Trainer
    logger: MemoryLogger
    recorder: Recorder
    curriculum: CurriculumCallback
    rollout_checksums: list[str]
    root: Path
    settings: dict[str, Any] = field(default_factory=dict)

    def checkpoint_after(self, batch: int) -> Path:
        """The checkpoint written at the end of rollout batch ``batch`` (1-based)."""
        path = self.root / "checkpoints" / f"epoch=0-step={self.recorder.global_steps[batch - 1]}.ckpt"
        assert path.is_file(), sorted(p.name for p in (self.root / "checkpoints").iterdir())
        return path


def fit_run(
    players: SimpleNamespace,
    root: Path,
    batches: int,
    settings: dict[str, Any],
    ckpt_path: Path | None = None,
) -> Run:
    torch.manual_seed(1234)  # the critic head is initialised from the global RNG
    settings = dict(settings)
    curriculum_settings = settings.pop("curriculum", {"mode": "schedule", "schedule": [2, 2]})
    module = make_module(players, **settings)
    datamodule = make_datamodule()
    logger = MemoryLogger()
    recorder = Recorder()
    curriculum = CurriculumCallback(stages=["pickup", "dropoff", "full"], **curriculum_settings)
    seen = record_rollouts(module)
    trainer = make_trainer(
        root, batches=batches, logger=logger, callbacks=[curriculum, recorder], checkpoint_every=1
    )
    trainer.fit(module, datamodule, ckpt_path=ckpt_path)
    return Run(module, datamodule, trainer, logger, recorder, curriculum, seen, root, settings)


REINFORCE = {"algorithm": "reinforce", "baseline": "mean"}
PPO = {"algorithm": "ppo", "baseline": "critic", "ppo_epochs": 2, "minibatch_size": 6, "clip": 0.2}
# LoRA policy, frozen KL reference rebuilt on resume, threshold curriculum (bar 0: advances after
# min_rollouts batches, like the schedule above)
LORA_PPO_KL = {
    **PPO,
    "lora": LoraSettings(r=4),
    "kl_coef": 0.05,
    "entropy_coef": 0.01,
    "curriculum": {"mode": "threshold", "thresholds": [0.0, 0.0], "min_rollouts": 2, "window": 8},
}


@pytest.fixture(scope="module")
def reinforce_run(players: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return fit_run(players, tmp_path_factory.mktemp("reinforce_a"), 4, REINFORCE)


def assert_on_policy(run: Run) -> None:
    rollouts, after = run.rollout_checksums, run.recorder.after_update
    assert len(rollouts) == len(after) == 4
    assert rollouts[0] == run.recorder.initial
    for i in range(1, len(rollouts)):
        # batch i was played with exactly the weights after update i-1 ...
        assert rollouts[i] == after[i - 1], f"rollout {i} did not use the weights of update {i - 1}"
        # ... and every update changed the weights, so they are not those of update i-2
        previous = after[i - 2] if i >= 2 else run.recorder.initial
        assert after[i - 1] != previous
        assert rollouts[i] != previous


def test_rollouts_are_on_policy(reinforce_run: Run) -> None:
    assert_on_policy(reinforce_run)
    # REINFORCE: one optimizer step per rollout batch
    assert reinforce_run.recorder.global_steps == [1, 2, 3, 4]
    assert reinforce_run.module.rollouts_done == 4


def test_logged_metrics(reinforce_run: Run) -> None:
    records = reinforce_run.logger.records
    assert sorted(records) == [0, 1, 2, 3]  # the logger steps once per rollout batch
    for step, record in records.items():
        assert record["charts/rollouts"] == step + 1
        for key in (
            "losses/policy",
            "losses/entropy",
            "rollout/success_rate",
            "charts/reflection_cache_hit_rate",
        ):
            assert math.isfinite(record[key]), key
        assert 0.0 <= record["rollout/success_rate"] <= 1.0
        assert record["curriculum/stage_index"] == float(step >= 2) + float(step >= 4)
    # the schedule [2, 2]: two batches of pickup, then dropoff (the switch applies to the next batch)
    assert reinforce_run.recorder.stages == ["pickup", "pickup", "dropoff", "dropoff"]
    assert "rollout/pickup/success_rate" in records[1] and "rollout/dropoff/success_rate" in records[2]
    assert reinforce_run.curriculum.stage == "full" and reinforce_run.datamodule.stage == "full"


def test_per_stage_metrics_are_logged_only_at_the_stage_s_steps(reinforce_run: Run) -> None:
    """Lightning re-sends a step metric logged earlier in the epoch at every later step: the
    pickup curves must not go on (with their last value) through the dropoff batches."""
    for step, record in reinforce_run.logger.records.items():
        stages = {key.split("/")[1] for key in record if key.startswith("rollout/") and key.count("/") == 2}
        assert stages == {reinforce_run.recorder.stages[step]}, (step, sorted(record))


def test_checkpoint_is_lean_and_loads_weights_only(reinforce_run: Run) -> None:
    checkpoint = torch.load(reinforce_run.checkpoint_after(2), weights_only=True, map_location="cpu")
    keys = set(checkpoint["state_dict"])
    trained = {name for name, p in reinforce_run.module.named_parameters() if p.requires_grad}
    assert keys == trained
    assert all(k.startswith("model.") for k in keys)  # no reflector, no reference, no critic (mean baseline)
    assert not any("reflect" in k for k in keys)
    rl_state = checkpoint["reflectrl_rl"]
    assert rl_state["rollouts_done"] == 2
    assert rl_state["baseline"]["initialized"] is True
    assert len(rl_state["cache"]["prompts"]) == len(rl_state["cache"]["reflections"]) > 0
    assert checkpoint["callbacks"][next(k for k in checkpoint["callbacks"] if "CurriculumCallback" in k)] == {
        "stage_index": 1,
        "rollouts_in_stage": 0,
        "recent": [],
    }


def assert_resume_matches(run_a: Run, run_b: Run) -> None:
    records_a, records_b = run_a.logger.records, run_b.logger.records
    assert sorted(records_b) == [2, 3], "the resumed run logs the steps after the checkpoint only"
    for step in (2, 3):
        a, b = comparable(records_a[step]), comparable(records_b[step])
        assert b["losses/policy"] == a["losses/policy"]  # exactly, not approximately
        assert b["rollout/success_rate"] == a["rollout/success_rate"]
        # the resumed run logs exactly the uninterrupted run's metrics: no more keys (a stage's
        # rollout/<stage>/* only at its own steps), no fewer, the same values
        assert b == a
        assert f"rollout/{run_a.recorder.stages[step]}/return" in b
    assert run_b.trainer.global_step == run_a.trainer.global_step
    assert run_b.recorder.global_steps == run_a.recorder.global_steps[2:]
    assert run_b.recorder.stages == run_a.recorder.stages[2:]
    assert run_b.module.rollouts_done == run_a.module.rollouts_done == 4
    assert run_b.module.baseline.state_dict() == run_a.module.baseline.state_dict()
    assert run_b.curriculum.state_dict() == run_a.curriculum.state_dict()
    assert run_b.datamodule.stage == run_a.datamodule.stage
    assert run_b.module.cache.state_dict() == run_a.module.cache.state_dict()
    # and the trained weights (policy and critic) end up bit-identical
    assert checksum(run_b.module) == checksum(run_a.module)
    # the resumed rollouts were on-policy too
    assert run_b.rollout_checksums[0] == run_a.recorder.after_update[1]
    assert run_b.rollout_checksums[1] == run_a.recorder.after_update[2]


def test_resume_reinforce_is_exact(reinforce_run: Run, players: SimpleNamespace, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_b = fit_run(players, tmp_path, 4, REINFORCE, ckpt_path=reinforce_run.checkpoint_after(2))
    # the rollout stream declares itself resumable, so Lightning does not warn that it is not
    assert not [w for w in caught if "not resumable" in str(w.message)]
    # the curriculum stage was restored before training restarted (dropoff, pushed in on_train_start)
    assert run_b.recorder.stages[0] == "dropoff"
    assert_resume_matches(reinforce_run, run_b)


def test_ppo_steps_the_optimizer_per_minibatch(players: SimpleNamespace, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = make_module(
        players, reflect=False, algorithm="ppo", baseline="critic", ppo_epochs=2, minibatch_size=4
    )
    critic_before = checksum(module.critic)
    logger = MemoryLogger()
    trainer = make_trainer(tmp_path, batches=1, logger=logger)
    trainer.fit(module, make_datamodule())
    record = logger.records[0]
    decisions = round(record["rollout/pickup/episode_length"] * EPISODES)
    # lightning-notes P5: global_step counts optimizer steps, ppo_epochs x ceil(decisions / minibatch)
    assert trainer.global_step == 2 * math.ceil(decisions / 4)
    assert module.rollouts_done == 1
    assert 0.0 <= record["losses/clipfrac"] <= 1.0 and record["losses/approx_kl"] > -1e-6
    assert math.isfinite(record["losses/value"]) and record["losses/value"] >= 0.0
    assert checksum(module.critic) != critic_before


@pytest.mark.parametrize("settings", [PPO, LORA_PPO_KL], ids=["ppo_critic", "lora_ppo_kl"])
def test_resume_ppo_is_exact(players: SimpleNamespace, tmp_path: Path, settings: dict[str, Any]) -> None:
    run_a = fit_run(players, tmp_path / "a", 4, settings)
    assert run_a.recorder.stages == ["pickup", "pickup", "dropoff", "dropoff"]
    assert_on_policy(run_a)
    # PPO: ppo_epochs x ceil(decisions / minibatch_size) optimizer steps per batch, so global_step jumps
    steps = run_a.recorder.global_steps
    assert steps[0] >= 2 and all(b - a >= 2 for a, b in zip(steps, steps[1:], strict=False))
    for record in run_a.logger.records.values():
        for key in ("losses/clipfrac", "losses/approx_kl", "losses/value"):
            assert math.isfinite(record[key]), key
    checkpoint = torch.load(run_a.checkpoint_after(2), weights_only=True, map_location="cpu")
    assert {"critic.weight", "critic.bias"} <= set(checkpoint["state_dict"])

    if settings.get("lora") is not None:
        assert all("lora_" in k or k.startswith("critic.") for k in checkpoint["state_dict"])
        assert not any(k.startswith("reference.") for k in checkpoint["state_dict"])

    run_b = fit_run(players, tmp_path / "b", 4, settings, ckpt_path=run_a.checkpoint_after(2))
    assert_resume_matches(run_a, run_b)


# ---------------------------------------------------------------------------------------------- curriculum
class FakeModule:
    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def log_dict(self, metrics: dict[str, float], **kwargs: Any) -> None:
        self.logged.append(dict(metrics))


def fake_trainer(stage: str = "pickup") -> Any:
    return SimpleNamespace(datamodule=SimpleNamespace(stage=stage))


def feed(
    callback: CurriculumCallback,
    trainer: Any,
    module: FakeModule,
    successes: list[bool],
    stage: str | None = None,
) -> None:
    outputs = {"successes": successes, "stage": stage or trainer.datamodule.stage}
    callback.on_train_batch_end(trainer, module, outputs, None, 0)  # type: ignore[arg-type]


def test_curriculum_schedule_mode() -> None:
    callback = CurriculumCallback(stages=["a", "b", "c"], mode="schedule", schedule=[2, 1])
    trainer, module = fake_trainer("a"), FakeModule()
    callback.on_train_start(trainer, module)  # type: ignore[arg-type]
    assert trainer.datamodule.stage == "a"
    feed(callback, trainer, module, [False] * 4)
    assert callback.stage == "a" and trainer.datamodule.stage == "a"
    feed(callback, trainer, module, [False] * 4)  # 2 rollouts in "a": advance, whatever the success
    assert callback.stage == "b" and trainer.datamodule.stage == "b"
    # a batch still reporting the old stage (played before the switch) does not count for "b"
    feed(callback, trainer, module, [True] * 4, stage="a")
    assert callback.stage == "b" and callback.rollouts_in_stage == 0
    feed(callback, trainer, module, [False] * 4)
    assert callback.stage == "c" and trainer.datamodule.stage == "c"
    for _ in range(3):  # the last stage is final
        feed(callback, trainer, module, [True] * 4)
    assert callback.stage == "c" and callback.stage_index == 2
    assert [m["curriculum/stage_index"] for m in module.logged] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    # outputs without successes (e.g. another module) are ignored
    callback.on_train_batch_end(trainer, module, None, None, 0)  # type: ignore[arg-type]
    assert len(module.logged) == 7


def test_curriculum_threshold_mode() -> None:
    callback = CurriculumCallback(
        stages=["a", "b", "c"], mode="threshold", thresholds=[0.5, 0.9], window=8, min_rollouts=2
    )
    trainer, module = fake_trainer("a"), FakeModule()
    feed(callback, trainer, module, [True] * 4)  # 100 % but only 1 rollout < min_rollouts
    assert callback.stage == "a"
    feed(callback, trainer, module, [True, True, False, False])  # 6/8 = 0.75 >= 0.5
    assert callback.stage == "b" and trainer.datamodule.stage == "b" and list(callback.recent) == []
    feed(callback, trainer, module, [True, True, False, False])  # 2/4 = 0.5 < 0.9
    feed(callback, trainer, module, [True, True, False, False])  # 4/8 = 0.5
    assert callback.stage == "b"
    feed(callback, trainer, module, [True] * 4)  # window of 8: [T T F F T T T T] = 0.75
    assert callback.stage == "b"
    assert module.logged[-1]["curriculum/success_rate"] == pytest.approx(0.75)
    feed(callback, trainer, module, [True, True, True, False])  # [T T T T T T T F] = 0.875 < 0.9
    assert callback.stage == "b"
    feed(callback, trainer, module, [True] * 4)  # [T T T F T T T T] = 7/8 = 0.875
    assert callback.stage == "b"
    feed(callback, trainer, module, [True] * 4)  # 8/8 = 1.0 >= 0.9
    assert callback.stage == "c" and trainer.datamodule.stage == "c"


def test_the_update_scores_with_dropout_off_as_the_rollout_did(players: SimpleNamespace, tmp_path: Path) -> None:
    """A hub model keeps its dropout (the tiny players have none): the update must score each
    decision as the rollout that sampled it did, or REINFORCE and PPO train on noise."""
    model, tokenizer = build_backbone(BackboneConfig(name_or_path=players.policy))
    for layer in model.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.5
    model.config.update({"resid_pdrop": 0.5, "embd_pdrop": 0.5, "attn_pdrop": 0.5})
    policy = export_backbone(model, tokenizer, tmp_path / "dropout_policy")
    module = make_module(SimpleNamespace(policy=str(policy), reflection=players.reflection))
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in module.model.modules())
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    chunk_loss = module._chunk_loss

    def spy(index: torch.Tensor, prompts: list[str], choices: list, actions: torch.Tensor,
            old_log_probs: torch.Tensor, *rest: Any) -> Any:
        with torch.no_grad():
            scored, _ = module._score([prompts[i] for i in index.tolist()], [choices[i] for i in index.tolist()])
        pairs.append((scored.gather(1, actions[index][:, None]).squeeze(1), old_log_probs[index]))
        return chunk_loss(index, prompts, choices, actions, old_log_probs, *rest)

    module._chunk_loss = spy  # type: ignore[method-assign]
    make_trainer(tmp_path, batches=1).fit(module, make_datamodule())
    assert pairs
    for scored, sampled_with in pairs:
        assert torch.allclose(scored, sampled_with, atol=1e-5), (scored, sampled_with)


def test_validation_and_test_leave_the_training_cache_alone(players: SimpleNamespace) -> None:
    """The training cache is in the checkpoint; Lightning saves before validating and a resumed
    run skips that validation, so validation must not touch it (exact resume)."""
    module = make_module(players)
    assert module.agent().cache is module.cache
    assert module.agent(evaluation=True).cache is module.eval_cache is not module.cache
    evaluation = EnvEvalConfig(stages=["pickup"], split="val", episodes=2, batch_size=2, seed=5)
    module.validation_step(next(iter(EpisodeBatches(evaluation))), 0)
    assert module.cache is not None and module.eval_cache is not None
    assert module.cache.state_dict() == ReflectionCache(1000).state_dict()  # untouched: still empty
    assert len(module.eval_cache.state_dict()["prompts"]) > 0


def test_curriculum_threshold_judges_the_episodes_so_far_once_min_rollouts_have_passed() -> None:
    # window=128 is an upper bound: from the min_rollouts-th batch on, the stage's episodes so far count
    callback = CurriculumCallback(stages=["a", "b"], mode="threshold", thresholds=[0.9], window=128, min_rollouts=2)
    trainer, module = fake_trainer("a"), FakeModule()
    feed(callback, trainer, module, [True] * 8)
    assert callback.stage == "a"  # one batch < min_rollouts
    feed(callback, trainer, module, [True] * 7 + [False])  # 15/16 = 0.94 >= 0.9 on 16 episodes
    assert callback.stage == "b"


def test_curriculum_state_is_primitive_and_round_trips() -> None:
    callback = CurriculumCallback(
        stages=["a", "b", "c"], mode="threshold", thresholds=[0.9, 0.9], window=8, min_rollouts=1
    )
    trainer, module = fake_trainer("a"), FakeModule()
    feed(callback, trainer, module, [True, False, True, True])
    state = callback.state_dict()
    assert state == {"stage_index": 0, "rollouts_in_stage": 1, "recent": [1.0, 0.0, 1.0, 1.0]}
    assert all(type(x) is float for x in state["recent"])
    callback.stage_index = 1
    restored = CurriculumCallback(
        stages=["a", "b", "c"], mode="threshold", thresholds=[0.9, 0.9], window=8, min_rollouts=1
    )
    restored.load_state_dict(callback.state_dict())
    assert restored.state_dict() == callback.state_dict() and restored.stage == "b"
    assert restored.recent.maxlen == 8
    # the restored stage is pushed into the datamodule at on_train_start (lightning-notes P6)
    fresh = fake_trainer("a")
    restored.on_train_start(fresh, module)  # type: ignore[arg-type]
    assert fresh.datamodule.stage == "b"


def test_curriculum_rejects_bad_settings() -> None:
    """One-line user errors naming the callback (the CLI reports them as such, not a traceback)."""
    where = "config key 'trainer.callbacks (CurriculumCallback)': "
    with pytest.raises(ReflectRLError, match=re.escape(where) + "mode"):
        CurriculumCallback(mode="linear")
    with pytest.raises(ReflectRLError, match="schedule needs 2 entries"):
        CurriculumCallback(stages=["a", "b", "c"], mode="schedule", schedule=[1])
    with pytest.raises(ReflectRLError, match="schedule needs 2 entries >= 0"):
        CurriculumCallback(stages=["a", "b", "c"], mode="schedule", schedule=[1, -1])
    with pytest.raises(ReflectRLError, match="thresholds needs 1 entries"):
        CurriculumCallback(stages=["a", "b"], mode="threshold", thresholds=[0.5, 0.5])
    with pytest.raises(ReflectRLError, match=r"in \[0, 1\]"):
        CurriculumCallback(stages=["a", "b"], mode="threshold", thresholds=[90])
    with pytest.raises(ReflectRLError, match="window and min_rollouts"):
        CurriculumCallback(stages=["a", "b"], mode="threshold", window=0)


@pytest.mark.parametrize(
    ("place", "expected"),
    [
        ("datamodule", "config key 'data.init_args' (stage 'dropof', split 'train'): stage must be one of"),
        ("curriculum", "config key 'trainer.callbacks (CurriculumCallback).stages' (stage 'dropof', split 'train')"),
        ("evaluation", "config key 'data.init_args.evaluation.stages' (stage 'dropof', split 'test')"),
        ("validation", "config key 'data.init_args.validation.stages' (stage 'dropof', split 'val')"),
    ],
)
def test_a_stage_the_env_does_not_know_fails_before_training(
    place: str, expected: str, players: SimpleNamespace, tmp_path: Path
) -> None:
    """Not when the schedule reaches the stage, nor after fit when the evaluation plays it."""
    datamodule = make_datamodule(stage="dropof" if place == "datamodule" else "pickup")
    bad = EnvEvalConfig(stages=["pickup", "dropof"], split="test", episodes=2, batch_size=2)
    if place == "evaluation":
        datamodule.evaluation = bad
    if place == "validation":
        datamodule.validation = EnvEvalConfig(stages=["pickup", "dropof"], split="val", episodes=2, batch_size=2)
    stages = ["pickup", "dropof", "full"] if place == "curriculum" else ["pickup", "dropoff", "full"]
    curriculum = CurriculumCallback(stages=stages, mode="schedule", schedule=[5, 5])
    module = make_module(players, reflect=False)
    trainer = make_trainer(tmp_path, batches=1, callbacks=[curriculum])
    with pytest.raises(ReflectRLError) as caught:
        trainer.fit(module, datamodule)
    assert expected in str(caught.value)
    assert module.rollouts_done == 0


# ---------------------------------------------------------------------------------------------- LoRA
def test_lora_policy_trains_only_the_adapter(tmp_path: Path) -> None:
    base_model, tokenizer = build_backbone(BackboneConfig(**TINY, init_seed=5))
    base_dir = export_backbone(base_model, tokenizer, tmp_path / "base")
    base_weights = {k: v.clone() for k, v in base_model.state_dict().items()}
    torch.manual_seed(0)
    module = RLFTModule(
        backbone=BackboneConfig(name_or_path=str(base_dir), lora=LoraSettings(r=4)),
        acting=ActingSettings(reflect=False, max_prompt_tokens=512),
        rl=RLSettings(algorithm="reinforce", baseline="critic"),
        lr=1e-2,
        seed=1,
    )
    lora_before = {n: p.detach().clone() for n, p in module.named_parameters() if "lora_" in n}
    assert lora_before and all(p.requires_grad for n, p in module.named_parameters() if "lora_" in n)
    trainer = make_trainer(tmp_path, batches=2, checkpoint_every=1)
    trainer.fit(module, make_datamodule())
    assert trainer.global_step == 2

    # every base weight bitwise unchanged; the adapter moved
    base_now = module.model.get_base_model().state_dict()
    checked = 0
    for key, value in base_now.items():
        if "lora_" in key:
            continue
        original = base_weights[key.replace(".base_layer.", ".")]
        assert torch.equal(value, original), key
        checked += 1
    assert checked >= len(base_weights) - 1  # (GPT-2's lm_head is tied to wte)
    changed = [n for n, p in module.named_parameters() if "lora_" in n and not torch.equal(p, lora_before[n])]
    assert changed

    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    keys = set(checkpoint["state_dict"])
    assert keys == {n for n, p in module.named_parameters() if p.requires_grad}
    assert {"critic.weight", "critic.bias"} <= keys
    assert all("lora_" in k or k.startswith("critic.") for k in keys)


# ---------------------------------------------------------------------------------------------- reflection
def test_reflection_cache_hits_are_exact(players: SimpleNamespace) -> None:
    module = make_module(players, reflect=True)
    request = RolloutRequest(make_datamodule("full"))
    first, _ = module.rollout(request)
    assert module.cache.hits + module.cache.misses > 0
    hits_before = module.cache.hits
    second, _ = module.rollout(request)  # same rollout index: same seeds, same sampled actions
    assert module.cache.hits > hits_before and module.cache.hit_rate() > 0
    assert [[t.decision.action for t in e.transitions] for e in second] == [
        [t.decision.action for t in e.transitions] for e in first
    ]
    # every reflection the rollout used equals a fresh greedy generation of the frozen reflector
    reflector, tokenizer = module.reflector_model()
    transitions = [t for e in second for t in e.transitions]
    fresh = generate_reflections(
        reflector,
        tokenizer,
        [reflection_prompt(t.observation) for t in transitions],
        max_new_tokens=REFLECTION_TOKENS,
        temperature=0.0,
    )
    assert [t.decision.extra["reflection"] for t in transitions] == fresh
    for transition in transitions:
        single = generate_reflections(
            reflector,
            tokenizer,
            [reflection_prompt(transition.observation)],
            max_new_tokens=REFLECTION_TOKENS,
            temperature=0.0,
        )
        assert transition.decision.extra["reflection"] == single[0]
        assert f"{REFLECTION_MARKER}" in transition.decision.extra["prompt"]
    # the reflector is frozen and outside the module tree (never trained, never checkpointed)
    assert not any(p.requires_grad for p in reflector.parameters())
    assert not any(p is q for p in reflector.parameters() for q in module.parameters())


def test_a_checkpointed_cache_is_reused_only_by_the_same_reflector_setup(players: SimpleNamespace) -> None:
    module = make_module(players, reflect=True)
    module.rollout(RolloutRequest(make_datamodule("full")))
    checkpoint: dict[str, Any] = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["reflectrl_rl"]["cache"]["prompts"]
    same = make_module(players, reflect=True)
    same.on_load_checkpoint(checkpoint)
    same.on_train_start()  # where the saved cache is checked against the reflector (on its device)
    assert same.cache.entries == module.cache.entries
    # a longer reflection limit (or another reflector) writes other texts: the memo is not reused
    other = make_module(players, reflect=True, reflection_tokens=REFLECTION_TOKENS + 4)
    other.on_load_checkpoint(checkpoint)
    other.on_train_start()
    assert not other.cache.entries and other.rollouts_done == module.rollouts_done


def test_a_reflector_retrained_into_the_same_folder_does_not_reuse_the_cache(
    players: SimpleNamespace, tmp_path: Path
) -> None:
    folder = tmp_path / "reflection"
    shutil.copytree(players.reflection, folder)
    module = make_module(SimpleNamespace(policy=players.policy, reflection=str(folder)), reflect=True)
    module.rollout(RolloutRequest(make_datamodule("full")))
    checkpoint: dict[str, Any] = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    # same path and settings, other weights (a new reflection SFT run exported over the old one)
    retrained, tokenizer = build_backbone(BackboneConfig(**TINY, init_seed=99))
    export_backbone(retrained, tokenizer, folder)
    resumed = make_module(SimpleNamespace(policy=players.policy, reflection=str(folder)), reflect=True)
    resumed.on_load_checkpoint(checkpoint)
    resumed.on_train_start()
    assert checkpoint["reflectrl_rl"]["cache"]["prompts"] and not resumed.cache.entries


def test_ppo_refuses_a_checkpoint_cadence_it_would_skip(players: SimpleNamespace, tmp_path: Path) -> None:
    module = make_module(players, reflect=False, algorithm="ppo", ppo_epochs=2, minibatch_size=4)
    trainer = make_trainer(tmp_path, batches=2, checkpoint_every=5)
    with pytest.raises(ReflectRLError, match="every_n_train_steps: 5 with rl.algorithm ppo"):
        trainer.fit(module, make_datamodule())
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_reflection_cache_capacity() -> None:
    cache = ReflectionCache(capacity=3)
    for i in range(5):
        cache.put(f"p{i}", f"r{i}")
    assert list(cache.entries) == ["p2", "p3", "p4"]
    assert cache.get("p0") is None and cache.get("p2") == "r2"  # p2 is now most recent
    cache.put("p5", "r5")
    assert list(cache.entries) == ["p4", "p2", "p5"]
    assert (cache.hits, cache.misses) == (1, 1) and cache.hit_rate() == 0.5
    restored = ReflectionCache(capacity=3)
    restored.load_state_dict(cache.state_dict())
    assert restored.entries == cache.entries and restored.hit_rate() == 0.5
    # a checkpoint written with a larger cache still respects this cache's bound (most recent kept)
    smaller = ReflectionCache(capacity=2)
    smaller.load_state_dict(cache.state_dict())
    assert list(smaller.entries) == ["p2", "p5"]
    smaller.put("p6", "r6")
    assert list(smaller.entries) == ["p5", "p6"]


def test_reflection_cache_capacity_in_rollouts(players: SimpleNamespace) -> None:
    module = make_module(players, reflect=True, cache_size=2)
    module.rollout(RolloutRequest(make_datamodule("full")))
    assert 0 < len(module.cache.entries) <= 2
    assert module.cache.misses > 2  # more distinct states than the cache holds


def test_without_reflection_trains_and_tracks_kl(players: SimpleNamespace, tmp_path: Path) -> None:
    module = make_module(players, reflect=False, kl_coef=0.1)
    assert module.reflector_model() == (None, None)
    logger = MemoryLogger()
    trainer = make_trainer(tmp_path, batches=2, logger=logger, checkpoint_every=1)
    seen = record_rollouts(module)
    before = checksum(module.model)
    trainer.fit(module, make_datamodule())
    assert trainer.global_step == 2 and len(seen) == 2
    assert module._reflector is None
    assert checksum(module.model) != before
    # the first update starts from the reference policy itself: KL exactly 0, then it grows
    assert logger.records[0]["losses/kl_to_reference"] == pytest.approx(0.0, abs=1e-7)
    assert logger.records[1]["losses/kl_to_reference"] > 0.0
    # no reflection in the prompts, and the frozen KL reference stays out of the checkpoint
    agent = module.agent()
    decision = agent.decide(["a state"], [["left", "right"]], greedy=True)[0]
    assert decision.extra["reflection"] is None and REFLECTION_MARKER not in decision.extra["prompt"]
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert all(k.startswith("model.") for k in checkpoint["state_dict"])
    assert checkpoint["reflectrl_rl"]["cache"] == {"prompts": [], "reflections": [], "hits": 0, "misses": 0}
    # and it reloads into a fresh module (strict about trained weights only)
    fresh = make_module(players, reflect=False, kl_coef=0.1)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=False)
    assert checksum(fresh.model) == checksum(module.model)
    assert fresh.rollouts_done == 2


def test_stop_and_resume_from_last_checkpoint(players: SimpleNamespace, tmp_path: Path) -> None:
    """The CLI's ``--ckpt_path last`` flow at full episode length: stop after 3 updates, resume to 6."""

    def run(
        root: Path, max_steps: int, ckpt_path: Path | None = None
    ) -> tuple[RLFTModule, MemoryLogger, pl.Trainer]:
        torch.manual_seed(0)
        module = make_module(players, reflect=True, reflection_tokens=16)
        logger = MemoryLogger()
        curriculum = CurriculumCallback(
            stages=["pickup", "dropoff", "full"], mode="schedule", schedule=[2, 2]
        )
        trainer = make_trainer(
            root, batches=6, logger=logger, callbacks=[curriculum], checkpoint_every=1, max_steps=max_steps
        )
        trainer.fit(module, make_datamodule(horizon=24, episodes=8), ckpt_path=ckpt_path)
        return module, logger, trainer

    full_module, full_logger, _ = run(tmp_path / "full", -1)
    _, _, stopped = run(tmp_path / "stopped", 3)
    assert stopped.global_step == 3
    resumed_module, resumed_logger, resumed = run(
        tmp_path / "resumed", -1, tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    )
    assert resumed.global_step == 6 and sorted(resumed_logger.records) == [3, 4, 5]
    for step in (3, 4, 5):
        b = comparable(resumed_logger.records[step])
        assert {k: full_logger.records[step].get(k) for k in b} == b
    assert checksum(resumed_module) == checksum(full_module)
    assert resumed_module.cache.state_dict() == full_module.cache.state_dict()


class GradientRecorder(pl.Callback):
    def __init__(self) -> None:
        self.gradients: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        self.gradients.append(
            {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        )


def test_reinforce_chunks_equal_the_full_batch(players: SimpleNamespace, tmp_path: Path) -> None:
    """REINFORCE splits the batch into minibatch_size chunks only to bound memory: the gradient
    of the step and the logged losses are those of the whole batch."""
    results = {}
    for size in (3, 64):
        module = make_module(players, reflect=False, minibatch_size=size, entropy_coef=0.05, kl_coef=0.1)
        logger, grads = MemoryLogger(), GradientRecorder()
        trainer = make_trainer(tmp_path / str(size), batches=1, logger=logger, callbacks=[grads])
        trainer.fit(module, make_datamodule(horizon=6))
        results[size] = (logger.records[0], grads.gradients)
    (chunked, chunked_grads), (whole, whole_grads) = results[3], results[64]
    assert len(chunked_grads) == len(whole_grads) == 1  # one optimizer step either way
    decisions = round(whole["rollout/pickup/episode_length"] * EPISODES)
    assert decisions > 3 and decisions % 3, "the batch must split into unequal chunks"
    assert chunked["rollout/pickup/return"] == whole["rollout/pickup/return"]  # the same episodes
    assert chunked_grads[0].keys() == whole_grads[0].keys()
    for name, grad in whole_grads[0].items():
        torch.testing.assert_close(chunked_grads[0][name], grad, atol=1e-7, rtol=1e-4, msg=name)
    for key in ("losses/policy", "losses/entropy"):
        assert chunked[key] == pytest.approx(whole[key], abs=1e-6), key


def test_acting_settings_reject_an_unknown_label_style() -> None:
    with pytest.raises(ValueError, match="labels must be one of"):
        ActingSettings(labels="letters")
    assert ActingSettings(labels="commands").choices(["cd ..", "cat  a.py"]) == ["cd ..", "cat a.py"]
    assert ActingSettings().choices(["cd ..", "cat a.py"]) == 2
    with pytest.raises(ValueError, match="list_actions=False needs labels='commands'"):
        ActingSettings(list_actions=False)
    assert ActingSettings(labels="commands", list_actions=False).choices(["cd ..", "cat a.py"]) == ["cd ..", "cat a.py"]


def test_cli_resume_from_last_keeps_the_checkpoint_s_model_settings(players: SimpleNamespace, tmp_path: Path) -> None:
    """``--ckpt_path last`` builds the model as an explicit ``--ckpt_path FILE`` does: from the
    checkpoint's hyper-parameters (LightningCLI re-applies them only for a file path). Otherwise
    the run trains with the checkpoint's optimizer (its lr) while recording the edited lr and
    playing other episodes (seed)."""
    checkpoints = tmp_path / "checkpoints"
    config = {
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 2, "limit_train_batches": 4, "logger": False,
            "num_sanity_val_steps": 0, "enable_progress_bar": False, "enable_model_summary": False,
            "default_root_dir": str(tmp_path),
            "callbacks": [{
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(checkpoints), "save_last": True, "every_n_train_steps": 1, "save_top_k": 0},
            }],
        },
        "model": {"class_path": "RLFTModule", "init_args": {
            "backbone": {"name_or_path": players.policy},
            "acting": {"reflect": False, "max_prompt_tokens": 512},
            "lr": 3e-3, "seed": 7,
        }},
        "data": {"class_path": "OnlineEnvDataModule", "init_args": {
            "env_kwargs": {"horizon": HORIZON}, "stage": "pickup", "episodes_per_batch": EPISODES, "seed": 3,
        }},
    }
    path = tmp_path / "rlft.yaml"
    path.write_text(yaml.safe_dump(config))
    assert run_main(["fit", "--config", str(path)]) == 0
    edited = ["--model.init_args.lr", "0.5", "--model.init_args.seed", "99", "--trainer.max_steps", "3"]
    assert run_main(["fit", "--config", str(path), "--ckpt_path", "last", *edited]) == 0
    checkpoint = torch.load(checkpoints / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 3 and checkpoint["reflectrl_rl"]["rollouts_done"] == 3
    assert checkpoint["hyper_parameters"]["lr"] == 3e-3 and checkpoint["hyper_parameters"]["seed"] == 7
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == 3e-3
