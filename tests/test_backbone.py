"""Backbone: byte tokenizer, tiny models, loading/export round trips, LoRA, two players, GGUF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from reflectrl.backbone import (
    BackboneConfig,
    BackboneError,
    LoraSettings,
    TwoPlayerBackbone,
    build_backbone,
    build_byte_tokenizer,
    export_backbone,
)

SMALL = {"num_layers": 2, "hidden_size": 32, "num_heads": 2}
TEXT = list(b"Taxi at (1, 2)\nChoice: 3")


def tiny(arch: str = "gpt2", **changes) -> BackboneConfig:
    return BackboneConfig(architecture=arch, **{**SMALL, **changes})


def randomise(model: torch.nn.Module, seed: int = 1, scale: float = 0.3, only: str | None = None) -> None:
    """Large random weights: outputs far from uniform, so a wrong load cannot pass by accident."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if only is None or only in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


def logits(model: torch.nn.Module, ids: list[int] = TEXT) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


# ---------------------------------------------------------------------------------------------- tokenizer
@pytest.mark.parametrize(
    "text", ["plain ascii", "héllo wörld ✓ 日本語 🚕", "a\nb\tc\r\n", "<|endoftext|> stays text"]
)
def test_byte_tokenizer_round_trips_any_utf8(text: str, tmp_path: Path) -> None:
    tokenizer = build_byte_tokenizer()
    ids = tokenizer(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))  # one token per byte, id == byte value, nothing added
    assert tokenizer.decode(ids) == text
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert loaded(text)["input_ids"] == ids
    assert loaded.decode(ids) == text


def test_byte_tokenizer_special_tokens() -> None:
    tokenizer = build_byte_tokenizer()
    assert len(tokenizer) == 258
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|pad|>", 256)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|endoftext|>", 257)
    assert tokenizer.bos_token_id == 257
    assert tokenizer.decode([104, 105, 257, 256], skip_special_tokens=True) == "hi"


def _bpe_corpus(tmp_path: Path) -> str:
    lines = [
        {"observation": f"Taxi ({r},{c}). Passenger at Y (4,0).\nHistory: south, east", "reflection": "Go south now.",
         "valid_actions": ["go south", "go north"], "action": 0}
        for r in range(5) for c in range(5)
    ]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_bpe_tokenizer_is_deterministic_shorter_and_round_trips(tmp_path: Path) -> None:
    config = tiny(tokenizer="bpe", tokenizer_corpus=[_bpe_corpus(tmp_path)], tokenizer_vocab_size=400)
    model, tokenizer = build_backbone(config)
    _, again = build_backbone(config)
    assert tokenizer.backend_tokenizer.to_str() == again.backend_tokenizer.to_str()
    assert len(tokenizer) <= 400 and model.config.vocab_size == len(tokenizer)
    seen = "Taxi (2,3). Passenger at Y (4,0).\nHistory: south, east\nAnalysis: Go south now."
    assert len(tokenizer(seen)["input_ids"]) < len(seen.encode()) / 2  # merges learnt from the corpus
    assert "Analysis" in tokenizer.convert_ids_to_tokens(tokenizer(seen)["input_ids"])  # template piece
    for text in [seen, "unseen ✓ 日本語 🚕\t\r\n", "<|endoftext|> stays text"]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.eos_token_id not in ids and tokenizer.pad_token_id not in ids
        assert tokenizer.decode(ids) == text
    # The exported player loads back with the same tokenizer (users never retrain it).
    export_backbone(model, tokenizer, tmp_path / "export")
    _, loaded = build_backbone(BackboneConfig(name_or_path=str(tmp_path / "export")))
    assert loaded(seen)["input_ids"] == tokenizer(seen)["input_ids"]


def test_bpe_tokenizer_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="needs tokenizer_corpus"):
        build_backbone(tiny(tokenizer="bpe"))
    with pytest.raises(BackboneError, match="corpus file '.*missing.jsonl' not found"):
        build_backbone(tiny(tokenizer="bpe", tokenizer_corpus=[str(tmp_path / "missing.jsonl")]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": "x"}\n{oops\n', encoding="utf-8")
    with pytest.raises(BackboneError, match=r"bad.jsonl:2: not JSON") as error:
        build_backbone(tiny(tokenizer="bpe", tokenizer_corpus=[str(bad)]))
    assert "\n" not in str(error.value)
    with pytest.raises(BackboneError, match="unknown tokenizer 'words'"):
        build_backbone(tiny(tokenizer="words"))


# ---------------------------------------------------------------------------------------------- tiny model
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tiny_model_is_deterministic_by_init_seed(arch: str, recwarn: pytest.WarningsRecorder) -> None:
    rng_before = torch.get_rng_state()
    first, tokenizer = build_backbone(tiny(arch, init_seed=3))
    second, _ = build_backbone(tiny(arch, init_seed=3))
    other, _ = build_backbone(tiny(arch, init_seed=4))
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    same, different = first.state_dict(), other.state_dict()
    for name, value in second.state_dict().items():
        assert torch.equal(same[name], value), name
    assert not all(torch.equal(same[name], value) for name, value in different.items())
    config = first.config
    assert config.vocab_size == len(tokenizer)
    assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (256, 257, 257)
    assert not [w for w in recwarn if "vocab" in str(w.message).lower()]


def test_tiny_model_dtype_and_freezing() -> None:
    model, _ = build_backbone(tiny(dtype="bfloat16", trainable=False))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_unknown_architecture_is_a_backbone_error() -> None:
    with pytest.raises(BackboneError, match="mamba"):
        build_backbone(tiny("mamba"))


# ---------------------------------------------------------------------------------------------- export / load
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_export_then_load_gives_identical_logits(arch: str, tmp_path: Path) -> None:
    model, tokenizer = build_backbone(tiny(arch))
    randomise(model)
    target = tmp_path / "export"
    export_backbone(model, tokenizer, target)
    loaded, loaded_tokenizer = build_backbone(BackboneConfig(name_or_path=str(target)))
    assert torch.equal(logits(model), logits(loaded))
    assert loaded_tokenizer("héllo")["input_ids"] == tokenizer("héllo")["input_ids"]
    # Exporting over an existing folder replaces it and leaves no staging folders behind.
    randomise(model, seed=2)
    export_backbone(model, tokenizer, target)
    reloaded, _ = build_backbone(BackboneConfig(name_or_path=str(target)))
    assert torch.equal(logits(model), logits(reloaded))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_adapter_over_a_saved_base_round_trips(arch: str, tmp_path: Path) -> None:
    base, tokenizer = build_backbone(tiny(arch))
    randomise(base)
    export_backbone(base, tokenizer, tmp_path / "base")
    model, tokenizer = build_backbone(
        BackboneConfig(name_or_path=str(tmp_path / "base"), lora=LoraSettings(r=4, alpha=8))
    )
    randomise(model, seed=5, only="lora_B")  # B starts at zero: make the adapter matter
    assert not torch.allclose(logits(model), logits(base))
    export_backbone(model, tokenizer, tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert "adapter_config.json" in files and "model.safetensors" not in files  # adapter only

    loaded, _ = build_backbone(BackboneConfig(name_or_path=str(tmp_path / "adapter")))
    assert torch.equal(logits(model), logits(loaded))
    trainable = [name for name, p in loaded.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    frozen, _ = build_backbone(BackboneConfig(name_or_path=str(tmp_path / "adapter"), trainable=False))
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training


def test_lora_on_the_tiny_model_exports_its_base_too(tmp_path: Path) -> None:
    model, tokenizer = build_backbone(tiny("llama", lora=LoraSettings(r=4)))
    randomise(model, seed=5, only="lora_B")
    export_backbone(model, tokenizer, tmp_path / "adapter")
    loaded, loaded_tokenizer = build_backbone(BackboneConfig(name_or_path=str(tmp_path / "adapter")))
    assert torch.equal(logits(model), logits(loaded))
    # A re-export over the same folder must not lose the embedded base it was loaded from.
    export_backbone(loaded, loaded_tokenizer, tmp_path / "adapter")
    again, _ = build_backbone(BackboneConfig(name_or_path=str(tmp_path / "adapter")))
    assert torch.equal(logits(model), logits(again))


@pytest.mark.parametrize(("arch", "targets"), [("gpt2", {"c_attn"}), ("llama", {"q_proj", "v_proj"})])
def test_lora_trains_only_adapter_parameters(arch: str, targets: set[str]) -> None:
    model, _ = build_backbone(tiny(arch, lora=LoraSettings(r=4)))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable} == targets


# ---------------------------------------------------------------------------------------------- errors
def test_missing_local_path_is_a_one_line_backbone_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(BackboneError) as caught:
        build_backbone(BackboneConfig(name_or_path=str(missing)))
    message = str(caught.value)
    assert str(missing) in message and "\n" not in message
    assert message.startswith(f"cannot load model '{missing}'")
    error = caught.value  # no chained traceback from the hub client
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_folder_without_a_model_is_a_backbone_error(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match=str(tmp_path)):
        build_backbone(BackboneConfig(name_or_path=str(tmp_path)))


def test_unfetchable_hub_id_is_a_one_line_backbone_error() -> None:
    """Offline mode must fail at once, without a traceback or network retries."""
    script = textwrap.dedent(
        """
        from reflectrl.backbone import BackboneConfig, BackboneError, build_backbone
        try:
            build_backbone(BackboneConfig(name_or_path="nobody-here/no-such-model-xyz"))
        except BackboneError as error:
            print("ERROR:" + str(error))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("ERROR:")]
    assert lines == [lines[0]] and "cannot load model 'nobody-here/no-such-model-xyz'" in lines[0]


# ---------------------------------------------------------------------------------------------- two players
@pytest.fixture(scope="module")
def saved_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tokenizer = build_backbone(tiny("gpt2", hidden_size=64, num_heads=4))
    randomise(model)
    return export_backbone(model, tokenizer, tmp_path_factory.mktemp("base") / "gpt2")


def test_two_players_share_one_base_and_switch_adapters(saved_base: Path, tmp_path: Path) -> None:
    reflection = BackboneConfig(
        name_or_path=str(saved_base), lora=LoraSettings(r=4), trainable=False, init_seed=1
    )
    policy = BackboneConfig(name_or_path=str(saved_base), lora=LoraSettings(r=8), init_seed=2)
    players = TwoPlayerBackbone(reflection, policy)
    assert players.shared_base
    assert players.model_for("reflection") is players.model_for("policy")
    randomise(players, seed=7, only="lora_B")

    with players.use("reflection") as model:
        base_weight = model.get_base_model().transformer.wte.weight
        assert model.active_adapter == "reflection" and not model.training  # frozen player: eval
        reflection_logits = logits(model)
    with players.use("policy") as model:
        assert model.get_base_model().transformer.wte.weight.data_ptr() == base_weight.data_ptr()
        assert model.active_adapter == "policy" and model.training
        policy_logits = logits(model)
    assert not torch.allclose(reflection_logits, policy_logits)

    # Only the policy adapter trains, whichever adapter was last active.
    trainable = {name for name, p in players.named_parameters() if p.requires_grad}
    assert trainable and all(".policy." in name for name in trainable)
    assert len(players.trainable_parameters()) == len(trainable)

    # One base + two small adapters: well under the 0.6x memory budget of two full models.
    full, _ = build_backbone(BackboneConfig(name_or_path=str(saved_base)))
    full_bytes = sum(p.numel() * p.element_size() for p in full.parameters())
    shared_bytes = sum(p.numel() * p.element_size() for p in players.parameters())
    assert shared_bytes <= 0.6 * 2 * full_bytes

    # Each adapter exports alone and two exports load back onto one shared base.
    players.export("reflection", tmp_path / "reflection")
    players.export("policy", tmp_path / "policy")
    reloaded = TwoPlayerBackbone(
        BackboneConfig(name_or_path=str(tmp_path / "reflection"), trainable=False),
        BackboneConfig(name_or_path=str(tmp_path / "policy")),
    )
    assert reloaded.shared_base
    with reloaded.use("reflection") as model:
        assert torch.equal(logits(model), reflection_logits)
    with reloaded.use("policy") as model:
        assert torch.equal(logits(model), policy_logits)


def test_two_tiny_players_are_separate_models() -> None:
    players = TwoPlayerBackbone(tiny(trainable=False), tiny(init_seed=1))
    assert not players.shared_base
    reflection, policy = players.model_for("reflection"), players.model_for("policy")
    assert reflection is not policy
    players.train()  # what Lightning does at the start of fit: the frozen player stays in eval
    assert not reflection.training and policy.training
    assert {id(p) for p in players.trainable_parameters()} == {id(p) for p in policy.parameters()}
    assert players.tokenizer.eos_token_id == 257
    with pytest.raises(ValueError, match="critic"):
        players.model_for("critic")


# ---------------------------------------------------------------------------------------------- GGUF
def _write_tiny_llama_gguf(model: torch.nn.Module, path: Path) -> None:
    """Write a float32 GGUF the way llama.cpp's converter lays out a Llama model."""
    gguf = pytest.importorskip("gguf", reason="writing a GGUF file needs the gguf package")
    from reflectrl.backbone import _bytes_to_unicode

    config = model.config
    heads = config.num_attention_heads

    def permute(weight):  # llama.cpp stores q/k rows interleaved per rotary pair
        return (
            weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2)
            .reshape(weight.shape)
        )

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)
    byte_map = _bytes_to_unicode()
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([byte_map[b] for b in range(256)] + ["<|pad|>", "<|endoftext|>"])
    writer.add_token_types([1] * 256 + [3, 3])  # 3 = control
    writer.add_token_scores([0.0] * 258)
    writer.add_token_merges([])
    writer.add_bos_token_id(257)
    writer.add_eos_token_id(257)
    writer.add_pad_token_id(256)
    weights = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    names = {
        "attn_norm": "input_layernorm",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_q.weight", permute(weights[prefix + "self_attn.q_proj.weight"]))
        writer.add_tensor(f"blk.{i}.attn_k.weight", permute(weights[prefix + "self_attn.k_proj.weight"]))
        for gguf_name, hf_name in names.items():
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", weights[prefix + hf_name + ".weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_checkpoint_loads_with_identical_logits(tmp_path: Path) -> None:
    model, tokenizer = build_backbone(tiny("llama", hidden_size=64, num_heads=4))
    randomise(model)
    _write_tiny_llama_gguf(model, tmp_path / "tiny.gguf")
    loaded, loaded_tokenizer = build_backbone(
        BackboneConfig(name_or_path=str(tmp_path), gguf_file="tiny.gguf")
    )
    assert torch.equal(logits(model), logits(loaded))
    text = "Taxi at (1, 2) é\nChoice: 3"
    assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    # A path straight to the .gguf file works too.
    direct, _ = build_backbone(
        BackboneConfig(name_or_path=str(tmp_path / "tiny.gguf"), lora=LoraSettings(r=2))
    )
    assert torch.equal(logits(model), logits(direct))
