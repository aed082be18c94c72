"""SFT modules: the losses train, prompts match acting, lean checkpoints, exports round-trip."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import gymnasium
import lightning.pytorch as pl
import pytest
import torch
from conftest import TAXI, tiny_backbone
from torch.utils.data import DataLoader

import reflectrl.agent
import reflectrl.modules.reflection_sft
from reflectrl import prompts
from reflectrl.agent import ActingSettings, TwoPlayerAgent
from reflectrl.backbone import BackboneConfig, LoraSettings, build_backbone, export_backbone
from reflectrl.data import PLAIN_FIELDS, POLICY_FIELDS, read_jsonl
from reflectrl.datamodules import SFTDataModule
from reflectrl.datamodules.sft import EpochShuffle
from reflectrl.errors import ReflectRLError
from reflectrl.modules import PolicySFTModule, ReflectionSFTModule
from reflectrl.rollout import Decision, play_episodes

PROBE = "+---------+\n|R: | : :G|\nTaxi (2,1).\nAnalysis: go east\nChoice: 3"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(**{**defaults, **kwargs})


class LossRecorder(pl.Callback):
    """The loss of every training step, as returned by ``training_step``."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def logits_of(model: torch.nn.Module, tokenizer: Any, text: str = PROBE) -> torch.Tensor:
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(input_ids=ids).logits
    finally:
        model.train(was_training)


def write_subset(source: Path, target: Path, count: int) -> list[dict]:
    """The first ``count`` records of a JSONL file, written to ``target``."""
    lines = source.read_text().splitlines()[:count]
    target.write_text("\n".join(lines) + "\n")
    return [json.loads(line) for line in lines]


# ---------------------------------------------------------------------------------------------- learning
def choice_accuracy(module: PolicySFTModule, records: list[dict]) -> float:
    with torch.no_grad():
        log_probs = module._choice_log_probs(records)
    targets = torch.tensor([r["action"] for r in records])
    return float((log_probs.argmax(dim=-1) == targets).float().mean())


# records (= batch size), steps
LOSS_FALLS_SETUP = {"reflection": (8, 30), "policy": (16, 36), "policy-commands": (16, 60)}


@pytest.mark.parametrize("kind", ["reflection", "policy", "policy-commands"])
def test_sft_loss_falls(kind: str, taxi_data: Path, tmp_path: Path) -> None:
    """A few dozen full-batch steps on a handful of records: the SFT objective is learnable.

    (Overfitting one fixed batch is the classic "can it learn at all" check: a wrong target,
    mask or label would keep the loss near its initial value.)
    """
    pl.seed_everything(0)
    count, steps = LOSS_FALLS_SETUP[kind]
    labels = "commands" if kind.endswith("-commands") else "numbers"
    kind = kind.removesuffix("-commands")
    records = write_subset(taxi_data / f"{kind}_sft.train.jsonl", tmp_path / "train.jsonl", count)
    if kind == "reflection":
        module: pl.LightningModule = ReflectionSFTModule(
            tiny_backbone(), max_prompt_tokens=160, lr=1e-2, warmup_steps=3
        )
    else:
        module = PolicySFTModule(
            tiny_backbone(), acting=ActingSettings(max_prompt_tokens=256, labels=labels), lr=1e-2, warmup_steps=3
        )
        accuracy_before = choice_accuracy(module, records)
    data = SFTDataModule(str(tmp_path / "train.jsonl"), record_kind=kind, batch_size=count)
    recorder = LossRecorder()
    quiet_trainer(max_steps=steps, callbacks=[recorder]).fit(module, data)

    losses = recorder.losses
    assert len(losses) == steps and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, f"{kind} SFT loss did not fall: {first:.3f} -> {last:.3f}"
    if kind == "policy":
        majority = Counter(r["action"] for r in records).most_common(1)[0][1] / len(records)
        accuracy = choice_accuracy(module, records)
        # Chance is 1/6 (six valid actions); the most frequent label alone gives `majority`.
        assert accuracy > max(majority, 1 / 6) + 0.1, (accuracy_before, accuracy, majority)
        assert accuracy > accuracy_before


# ---------------------------------------------------------------------------------------------- prompts
def episode_prefix(records: list[dict], record: dict) -> list[int]:
    """The oracle actions of ``record``'s episode before its step (from the positive records)."""
    same = [
        r for r in records
        if (r["seed"], r["stage"], r["split"]) == (record["seed"], record["stage"], record["split"])
        and not r["negative"] and r["step"] < record["step"]
    ]
    steps = sorted(same, key=lambda r: r["step"])
    assert [r["step"] for r in steps] == list(range(record["step"])), "episode records are incomplete"
    return [r["action"] for r in steps]


@pytest.mark.parametrize(
    ("stage", "reflect"), [("pickup", True), ("full", True), ("full", False)], ids=["pickup", "full", "full-plain"]
)
def test_training_prompts_equal_the_prompts_used_when_acting(
    stage: str, reflect: bool, taxi_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SFT modules train on byte-for-byte the prompts the players see in a rollout.

    ``reflect=False`` is the no-reflection baseline: plain records, no analysis line.
    """
    kind, schema = ("policy_sft", POLICY_FIELDS) if reflect else ("plain_sft", PLAIN_FIELDS)
    records = read_jsonl(taxi_data / f"{kind}.train.jsonl", schema)
    candidates = [r for r in records if r["stage"] == stage and not r["negative"] and r["step"] >= 2]
    record = random.Random(stage).choice(candidates)
    prefix = episode_prefix(records, record)

    policy_seen: list[list[str]] = []
    original_scores = TwoPlayerAgent.choice_log_probs

    def spy_scores(self, policy_prompts, num_choices):
        policy_seen.append(list(policy_prompts))
        return original_scores(self, policy_prompts, num_choices)

    reflection_seen: list[list[str]] = []

    def fake_generate(model, tokenizer, reflection_prompts, **kwargs):
        # The frozen reflector "writes" the teacher's reflection for this state.
        reflection_seen.append(list(reflection_prompts))
        return [record["reflection"]] * len(reflection_prompts)

    original_nll = reflectrl.modules.reflection_sft.completion_nll
    nll_seen: list[tuple[list[str], list[str]]] = []

    def spy_nll(model, tokenizer, inputs, targets, **kwargs):
        nll_seen.append((list(inputs), list(targets)))
        return original_nll(model, tokenizer, inputs, targets, **kwargs)

    monkeypatch.setattr(TwoPlayerAgent, "choice_log_probs", spy_scores)
    monkeypatch.setattr(reflectrl.agent, "generate_reflections", fake_generate)
    monkeypatch.setattr(reflectrl.modules.reflection_sft, "completion_nll", spy_nll)

    policy = PolicySFTModule(
        tiny_backbone(), reflector=tiny_backbone(init_seed=7) if reflect else None,
        acting=ActingSettings(reflect=reflect),
    )

    # Training side: what the SFT steps feed the models.
    policy.training_step([record], 0)
    (trained_policy_prompt,) = policy_seen.pop()

    # Acting side: replay the episode and let the agent decide at the record's step.
    agent = policy.agent()
    live: dict[str, Any] = {}

    def decide(observations, valid_actions) -> list[Decision]:
        step = live.setdefault("step", 0)
        live["step"] += 1
        if step < record["step"]:
            return [Decision(action=prefix[step])]
        live["observation"], live["valid_actions"] = observations[0], valid_actions[0]
        decisions = agent.decide(observations, valid_actions)
        live["decision"] = decisions[0]
        return decisions

    env = gymnasium.make(TAXI)
    options = {"stage": record["stage"], "split": record["split"]}
    play_episodes([env], [record["seed"]], options, decide, max_steps=record["step"] + 1)

    assert live["observation"] == record["observation"]  # the replay reached the recorded state
    assert live["valid_actions"] == record["valid_actions"]
    (acting_policy_prompt,) = policy_seen[-1]
    assert live["decision"].extra["reflection"] == record["reflection"]
    assert live["decision"].extra["prompt"] == acting_policy_prompt
    assert trained_policy_prompt == acting_policy_prompt
    assert trained_policy_prompt.encode() == acting_policy_prompt.encode()
    # And it is the canonical prompt (nothing else slipped in).
    assert acting_policy_prompt == prompts.policy_prompt(
        record["observation"], record["reflection"], record["valid_actions"]
    )
    if not reflect:
        assert reflection_seen == [] and prompts.REFLECTION_MARKER not in acting_policy_prompt
        return

    # The reflection player: trained on the prompt it is asked with when acting.
    reflection = ReflectionSFTModule(tiny_backbone())
    reflection.training_step([{k: record[k] for k in ("observation", "reflection")}], 0)
    ((trained_reflection_prompt,), (trained_target,)) = nll_seen.pop()
    (acting_reflection_prompt,) = reflection_seen[-1]
    assert trained_reflection_prompt == acting_reflection_prompt
    assert trained_target == record["reflection"]
    assert acting_reflection_prompt == prompts.reflection_prompt(record["observation"])
    assert f"\n{prompts.REFLECTION_MARKER}{record['reflection']}\n" in acting_policy_prompt


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def lora_run(taxi_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A LoRA policy with a frozen reflector attached, trained 3 steps, checkpointed, exported."""
    root = tmp_path_factory.mktemp("lora_run")
    reflector_model, reflector_tokenizer = build_backbone(tiny_backbone(init_seed=3))
    reflector_dir = export_backbone(reflector_model, reflector_tokenizer, root / "reflector")
    module = PolicySFTModule(
        tiny_backbone(lora=LoraSettings(r=4)),
        reflector=BackboneConfig(name_or_path=str(reflector_dir)),
        acting=ActingSettings(max_prompt_tokens=128, reflection_max_tokens=4),
        lr=1e-2,
        warmup_steps=1,
        export_dir=str(root / "export"),
    )
    module.agent()  # attaches the frozen reflection player
    assert module._reflector is not None
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    data = SFTDataModule(str(taxi_data / "policy_sft.train.jsonl"), record_kind="policy", batch_size=4)
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(module, data)
    trainer.save_checkpoint(root / "lora.ckpt")
    return {"module": module, "before": before, "ckpt": root / "lora.ckpt", "export": root / "export",
            "reflector": reflector_dir}


@pytest.fixture(scope="module")
def full_run(taxi_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A fully fine-tuned reflection player, trained 2 steps, checkpointed, exported."""
    root = tmp_path_factory.mktemp("full_run")
    module = ReflectionSFTModule(tiny_backbone(), max_prompt_tokens=128, lr=1e-2, warmup_steps=1,
                                 export_dir=str(root / "export"))
    data = SFTDataModule(str(taxi_data / "reflection_sft.train.jsonl"), record_kind="reflection", batch_size=4)
    trainer = quiet_trainer(max_steps=2)
    trainer.fit(module, data)
    trainer.save_checkpoint(root / "full.ckpt")
    return {"module": module, "ckpt": root / "full.ckpt", "export": root / "export"}


def test_checkpoint_holds_only_trained_parameters(lora_run: dict[str, Any]) -> None:
    module, before = lora_run["module"], lora_run["before"]
    trained = {name for name, p in module.named_parameters() if p.requires_grad}
    frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
    assert trained and frozen and all("lora_" in name for name in trained)

    checkpoint = torch.load(lora_run["ckpt"], map_location="cpu", weights_only=True)
    assert set(checkpoint["state_dict"]) == trained
    assert not any("reflector" in key for key in checkpoint["state_dict"])
    params = dict(module.named_parameters())
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(value, params[name].detach())
    json.dumps(checkpoint["hyper_parameters"])  # plain data only

    # Training moved every adapter weight and no base weight.
    for name, param in params.items():
        if name in frozen:
            assert torch.equal(param.detach(), before[name]), f"frozen {name} changed"
        else:
            assert not torch.equal(param.detach(), before[name]), f"LoRA {name} did not train"
    # The reflector stays frozen and outside the module (never trained, never saved).
    reflector, _ = module._reflector
    assert not any(p.requires_grad for p in reflector.parameters())
    assert not any(p is q for p in reflector.parameters() for q in module.parameters())


def test_lean_checkpoint_loads_back(lora_run: dict[str, Any]) -> None:
    module, before = lora_run["module"], lora_run["before"]
    loaded = PolicySFTModule.load_from_checkpoint(lora_run["ckpt"], map_location="cpu", weights_only=True)
    trained = dict(module.named_parameters())
    for name, param in loaded.named_parameters():
        expected = trained[name] if param.requires_grad else before[name]
        assert torch.equal(param.detach(), expected.detach()), name
    assert loaded.reflector_config == module.reflector_config


DIFFERENT_CONFIGS = {
    "wider": ("full", ReflectionSFTModule, {"hidden_size": 64}),
    "deeper": ("full", ReflectionSFTModule, {"num_layers": 3}),
    "shallower": ("full", ReflectionSFTModule, {"num_layers": 1}),
    "lora over a full checkpoint": ("full", ReflectionSFTModule, {"lora": LoraSettings(r=4)}),
    "full over a lora checkpoint": ("lora", PolicySFTModule, {}),
    "other lora rank": ("lora", PolicySFTModule, {"lora": LoraSettings(r=8)}),
}


@pytest.mark.parametrize("case", DIFFERENT_CONFIGS.values(), ids=DIFFERENT_CONFIGS.keys())
def test_checkpoint_of_a_different_model_config_is_a_one_line_error(
    case: tuple, full_run: dict[str, Any], lora_run: dict[str, Any]
) -> None:
    source, cls, changes = case
    ckpt = (full_run if source == "full" else lora_run)["ckpt"]
    with pytest.raises(ReflectRLError, match="different model config") as caught:
        cls.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True, backbone=tiny_backbone(**changes))
    message = str(caught.value)
    assert "\n" not in message and "'model." in message  # names one offending weight


def test_trainer_restore_of_a_different_model_config_is_a_one_line_error(
    full_run: dict[str, Any], taxi_data: Path
) -> None:
    """The path ``reflectrl test --ckpt_path`` takes: the Trainer restores into a built module."""
    module = ReflectionSFTModule(tiny_backbone(hidden_size=64), max_prompt_tokens=64)
    data = SFTDataModule(
        str(taxi_data / "reflection_sft.train.jsonl"),
        test_file=str(taxi_data / "reflection_sft.test.jsonl"),
        record_kind="reflection",
        batch_size=4,
    )
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    with pytest.raises(ReflectRLError, match="different model config") as caught:
        quiet_trainer(limit_test_batches=1).test(module, data, ckpt_path=str(full_run["ckpt"]), verbose=False)
    assert "\n" not in str(caught.value)
    for name, param in module.named_parameters():
        assert torch.equal(param.detach(), before[name])


def test_checkpoint_of_a_differently_trained_tokenizer_is_a_one_line_error(taxi_data: Path, tmp_path: Path) -> None:
    """A BPE tokenizer is retrained from its corpus on resume: a changed corpus must not load silently."""
    def bpe(corpus: str) -> Any:
        return tiny_backbone(tokenizer="bpe", tokenizer_corpus=[str(taxi_data / corpus)], tokenizer_vocab_size=300)

    module = ReflectionSFTModule(bpe("reflection_sft.train.jsonl"), max_prompt_tokens=128)
    data = SFTDataModule(str(taxi_data / "reflection_sft.train.jsonl"), record_kind="reflection", batch_size=4)
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "bpe.ckpt")
    loaded = ReflectionSFTModule.load_from_checkpoint(tmp_path / "bpe.ckpt", map_location="cpu", weights_only=True)
    assert loaded.tokenizer_fingerprint() == module.tokenizer_fingerprint()
    other = bpe("reflection_sft.val.jsonl")
    assert len(build_backbone(other)[1]) == len(module.tokenizer)  # same shapes: only the check can tell
    with pytest.raises(ReflectRLError, match="different tokenizer") as caught:
        ReflectionSFTModule.load_from_checkpoint(tmp_path / "bpe.ckpt", map_location="cpu", weights_only=True, backbone=other)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("which", ["full", "lora"])
def test_export_round_trip_gives_the_same_logits(
    which: str, full_run: dict[str, Any], lora_run: dict[str, Any]
) -> None:
    run = full_run if which == "full" else lora_run
    module = run["module"]
    loaded, tokenizer = build_backbone(BackboneConfig(name_or_path=str(run["export"])))
    expected = logits_of(module.model, module.tokenizer)
    actual = logits_of(loaded, tokenizer)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    # A trained model, not a fresh initialisation, was exported.
    fresh, fresh_tokenizer = build_backbone(module.backbone_config)
    assert not torch.allclose(logits_of(fresh, fresh_tokenizer), expected, atol=1e-3)
    if which == "lora":
        assert (run["export"] / "adapter_config.json").is_file()


def test_policy_test_on_records_logs_test_metrics(taxi_data: Path) -> None:
    """`test` on a records file (no env evaluation) reports test/*, never val/* names."""
    module = PolicySFTModule(tiny_backbone(), acting=ActingSettings(reflect=True, max_prompt_tokens=256))
    data = SFTDataModule(
        str(taxi_data / "policy_sft.train.jsonl"),
        test_file=str(taxi_data / "policy_sft.test.jsonl"),
        record_kind="policy",
        batch_size=8,
    )
    (results,) = quiet_trainer(limit_test_batches=2).test(module, data, verbose=False)
    assert set(results) == {"test/policy_loss", "test/choice_accuracy", "test/optimal_choice_rate"}
    assert 0.0 <= results["test/choice_accuracy"] <= results["test/optimal_choice_rate"] <= 1.0
    assert results["test/policy_loss"] > 0


def test_epoch_shuffle_is_the_shuffling_loader_order_and_survives_a_resume() -> None:
    """Epoch e's order is what a shuffling loader seeded alike gives an uninterrupted run at
    epoch e (so measured runs keep their data order), and a new sampler told the epoch (as
    Lightning does after a resume) gives it again, not epoch 0's."""
    records = list(range(23))
    uninterrupted = DataLoader(records, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(7))
    epochs = [[int(i) for batch in uninterrupted for i in batch] for _ in range(3)]
    assert epochs[0] != epochs[1] != epochs[2] and sorted(epochs[2]) == records
    module = SFTDataModule(train_file="unused.jsonl", batch_size=5, seed=7)
    for epoch, expected in enumerate(epochs):
        resumed = module._loader(records, shuffle=True)  # type: ignore[arg-type]
        resumed.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        assert [r for batch in resumed for r in batch] == expected, epoch
    assert isinstance(module._loader(records, shuffle=True).sampler, EpochShuffle)  # type: ignore[arg-type]


class _Killed(Exception):
    pass


class _StopAt(pl.Callback):
    """Records each step's loss and trained records; raises at a global step (a kill)."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.losses: list[float] = []
        self.batches: list[tuple[int, ...]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if self.stop_at is not None and trainer.global_step == self.stop_at:
            raise _Killed
        self.batches.append(tuple(record["step"] for record in batch))

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


def test_sft_resumed_in_the_middle_of_an_epoch_continues_it(taxi_data: Path, tmp_path: Path) -> None:
    """Killed mid-epoch and resumed: the same batches, losses and final weights as without the kill
    (the epoch goes on after its finished batches; it is neither replayed nor cut short)."""
    records = (taxi_data / "reflection_sft.train.jsonl").read_text().splitlines()[:16]
    data_file = tmp_path / "r16.jsonl"
    data_file.write_text("\n".join(records) + "\n")
    steps = 9  # 4 batches per epoch: the kill at step 6 is in the middle of epoch 1

    def fit(callback: _StopAt, ckpt_path: str | None = None, checkpoints: Path | None = None) -> ReflectionSFTModule:
        pl.seed_everything(0, verbose=False)
        module = ReflectionSFTModule(tiny_backbone(num_layers=1, hidden_size=32, num_heads=2), max_prompt_tokens=256,
                                     lr=1e-2, warmup_steps=2)
        callbacks: list[pl.Callback] = [callback]
        if checkpoints is not None:
            callbacks.insert(0, pl.callbacks.ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=1, save_top_k=-1,
                                                             filename="{step}"))
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=checkpoints is not None,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             max_steps=steps, callbacks=callbacks)
        data = SFTDataModule(str(data_file), record_kind="reflection", batch_size=4, seed=3)
        try:
            trainer.fit(module, data, ckpt_path=ckpt_path)
        except _Killed:
            pass
        return module

    whole = _StopAt()
    reference = fit(whole)
    first, second = _StopAt(stop_at=6), _StopAt()
    fit(first, checkpoints=tmp_path / "ck")
    resumed = fit(second, ckpt_path=str(tmp_path / "ck" / "step=6.ckpt"))
    assert first.batches + second.batches == whole.batches
    assert first.losses + second.losses == whole.losses
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True))


def test_prompt_limits_are_capped_at_the_model_positions() -> None:
    """Past its positions GPT-2 raises an IndexError mid-run: the limit is capped, prompts are
    cut from the left to fit."""
    module = ReflectionSFTModule(tiny_backbone(max_positions=64), max_prompt_tokens=768)
    assert module.max_prompt_tokens == 64
    long_record = {"observation": "Taxi at (1, 2). " * 40, "reflection": "Go north."}
    assert torch.isfinite(module._loss([long_record]))
    policy = PolicySFTModule(tiny_backbone(max_positions=64), acting=ActingSettings(reflect=False))
    assert policy.acting.max_prompt_tokens == 64
