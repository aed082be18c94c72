"""Tokenizer + causal LM for one player: the embedded tiny model, any Hugging Face model, LoRA, GGUF.

What ``BackboneConfig.name_or_path`` may name:

* ``None``: the embedded tiny model (GPT-2 or Llama layout) built from scratch over a byte-level
  tokenizer that needs no files. Its initial weights depend only on ``init_seed``, so a checkpoint
  that stores only the trained weights can always be completed by rebuilding the model.
* a local Hugging Face model folder (``config.json`` + weights), loaded with local files only;
* a local folder holding a GGUF file (``gguf_file`` names it; a path straight to a ``.gguf`` file
  works too), dequantised by transformers (needs the ``gguf`` package);
* a local PEFT adapter folder (``adapter_config.json``): its base model is loaded first (from
  ``reflectrl_base.json`` when ``export_backbone`` wrote one, else ``base_model_name_or_path``),
  then the adapter, trainable when ``trainable`` is true;
* a hub id, fetched by transformers (fails with a one-line ``BackboneError`` when offline).

``TwoPlayerBackbone`` holds both players; when both are LoRA adapters over the same pretrained base
it loads that base once and switches adapters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from reflectrl.errors import ReflectRLError
from reflectrl.prompts import TEMPLATE_PIECES

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
PLAYERS = ("reflection", "policy")
BASE_SIDECAR = "reflectrl_base.json"  # where export_backbone records an adapter's base model
EMBEDDED_BASE_DIR = "base_model"  # an adapter export's copy of a base that exists nowhere else

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Defaults where peft's own table is not what we want (GPT-2's fused qkv projection is a Conv1D).
_DEFAULT_LORA_TARGETS = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# The attribute a loaded base model carries naming where it came from; export_backbone reads it
# to record how an adapter's base can be loaded again.
_SOURCE_ATTR = "_reflectrl_source"


class BackboneError(ReflectRLError):
    """A model or tokenizer could not be built or loaded; the message is one line naming it."""


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft)."""

    r: int = 16
    """Rank of the low-rank update."""
    alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter's input."""
    target_modules: list[str] | None = None
    """Module names to adapt (None: GPT-2 ``c_attn``; Llama/Qwen/Mistral ``q_proj``, ``v_proj``)."""


@dataclass
class BackboneConfig:
    """Which language model a player uses, and how it is trained."""

    name_or_path: str | None = None
    """None: the embedded tiny model built from scratch. Otherwise a hub id, a local HF model
    folder, a local folder holding a GGUF file (see gguf_file), or a local PEFT adapter folder."""
    gguf_file: str | None = None
    """File name of the GGUF checkpoint inside name_or_path (requires the ``gguf`` package)."""
    architecture: str = "gpt2"
    """Layout of the tiny model: "gpt2" or "llama" (ignored for pretrained models)."""
    num_layers: int = 4
    """Tiny model: number of transformer blocks."""
    hidden_size: int = 256
    """Tiny model: width of the residual stream."""
    num_heads: int = 4
    """Tiny model: attention heads."""
    max_positions: int = 1024
    """Tiny model: longest sequence (position embeddings / RoPE range)."""
    dtype: str = "float32"
    """Parameter dtype: "float32", "bfloat16" or "float16"."""
    lora: LoraSettings | None = None
    """Train a LoRA adapter instead of all weights (None: full fine-tuning, or the loaded adapter's
    own settings when name_or_path is an adapter folder)."""
    trainable: bool = True
    """False: frozen (requires_grad off, eval mode), e.g. the reflection player during RL."""
    init_seed: int = 0
    """Seed of the tiny model's (and a new LoRA adapter's) initial weights; the global RNG is untouched."""
    tokenizer: str = "byte"
    """Tiny model's tokenizer: "byte" (one token per byte, needs nothing) or "bpe" (byte-level BPE
    trained in-process on ``tokenizer_corpus``: about 3x shorter sequences on the Taxi prompts,
    hence faster training, rollouts and reflection decoding)."""
    tokenizer_corpus: list[str] | None = None
    """"bpe": JSONL files whose string values (observations, reflections, action texts) train it."""
    tokenizer_vocab_size: int = 1024
    """"bpe": vocabulary size including the 256 bytes and the special tokens."""


# ---------------------------------------------------------------------------------------------- tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer that needs no files: token id == byte value, one token per byte.

    A BPE model with no merges over the 256-character ByteLevel alphabet, so any UTF-8 text
    round-trips. ``<|pad|>`` (id 256) pads; ``<|endoftext|>`` (id 257) is EOS and BOS. Nothing is
    added around encoded text (no BOS): prompts and completions are concatenated verbatim.
    """
    byte_map = _bytes_to_unicode()
    vocab = {byte_map[b]: b for b in range(256)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: no word splitting, the whole text is one "word" cut into single bytes.
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([PAD_TOKEN, EOS_TOKEN])
    return _with_special_tokens(core)


def _with_special_tokens(core: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a tokenizers core (which has the pad and EOS tokens) as the players' HF tokenizer."""
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
        # Text that happens to spell "<|endoftext|>" stays plain text: observations cannot
        # inject special tokens.
        split_special_tokens=True,
    )


def _corpus_strings(value: Any) -> Iterator[str]:
    """Every string inside a decoded JSON value (dict values, list items), depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _corpus_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _corpus_strings(item)


def read_tokenizer_corpus(files: list[str]) -> list[str]:
    """The texts a BPE tokenizer is trained on: all string values of the JSONL ``files``, in order.

    Raises BackboneError (one line, naming the file and line) for a missing file or a bad line.
    """
    texts: list[str] = []
    for name in files:
        path = Path(name).expanduser()
        if not path.is_file():
            raise BackboneError(f"tokenizer corpus file '{name}' not found")
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    texts.extend(_corpus_strings(json.loads(line)))
                except json.JSONDecodeError as error:
                    raise BackboneError(f"tokenizer corpus {name}:{number}: not JSON ({error.msg})") from None
                except RecursionError:
                    raise BackboneError(f"tokenizer corpus {name}:{number}: not JSON (nested too deeply)") from None
    if not texts:
        raise BackboneError(f"tokenizer corpus {files} holds no text")
    return texts


def train_bpe_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``; deterministic for the same texts and size.

    The 256 bytes are all in the alphabet, so any text encodes (no unknown token). Words and
    punctuation are split GPT-2 style before merging, so frequent words ("passenger", " south")
    become single tokens while the grid's characters stay small pieces. Special tokens as in
    :func:`build_byte_tokenizer` (pad, then EOS = BOS), and special-token text in the input stays
    plain text.
    """
    from tokenizers import trainers

    if vocab_size < 258 + 1:
        raise BackboneError(f"tokenizer_vocab_size {vocab_size} is too small (at least 259: 256 bytes + 2 specials + 1)")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return _with_special_tokens(core)


def build_tiny_tokenizer(config: BackboneConfig) -> PreTrainedTokenizerFast:
    """The tokenizer of the embedded tiny model that ``config`` describes."""
    if config.tokenizer == "byte":
        return build_byte_tokenizer()
    if config.tokenizer == "bpe":
        if not config.tokenizer_corpus:
            raise BackboneError("tokenizer 'bpe' needs tokenizer_corpus (JSONL files to train it on)")
        texts = read_tokenizer_corpus(config.tokenizer_corpus)
        # The prompt builder's fixed pieces ("Analysis: ", ...) occur in every prompt but in no
        # record: add them about as often as prompts will hold them, so they merge too.
        texts += list(TEMPLATE_PIECES) * max(1, len(texts) // 8)
        return train_bpe_tokenizer(texts, config.tokenizer_vocab_size)
    raise BackboneError(f"unknown tokenizer '{config.tokenizer}': expected 'byte' or 'bpe'")


# ---------------------------------------------------------------------------------------------- helpers
def _torch_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise BackboneError(f"unknown dtype '{name}': expected one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message squeezed onto one short line (hub errors span many lines)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _freeze(model: nn.Module) -> None:
    model.requires_grad_(False)
    model.eval()


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """Silence the deprecation warning peft triggers inside transformers on every adapter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


@contextlib.contextmanager
def _forked_rng(seed: int) -> Iterator[None]:
    """Run a block with the CPU RNG seeded, restoring the global RNG state afterwards."""
    with torch.random.fork_rng(devices=[]), _quiet_peft():
        torch.manual_seed(seed)
        yield


def _looks_like_path(name: str) -> bool:
    """True for names that cannot be hub ids (absolute, ./, ~, deeper than org/name, *.gguf)."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or "\\" in name
        or name.endswith(".gguf")
        or not _HUB_ID.match(name)
    )


def _resolve_source(name_or_path: str, gguf_file: str | None) -> tuple[str, str | None, bool]:
    """(what to pass to from_pretrained, gguf file, is local). Raises for a missing local path."""
    expanded = os.path.expanduser(name_or_path)
    if os.path.isfile(expanded) and expanded.endswith(".gguf") and gguf_file is None:
        return os.path.dirname(os.path.abspath(expanded)), os.path.basename(expanded), True
    if os.path.isdir(expanded):
        return os.path.abspath(expanded), gguf_file, True
    if os.path.exists(expanded):
        raise BackboneError(f"cannot load model '{name_or_path}': not a folder (nor a .gguf file)")
    if _looks_like_path(name_or_path):
        raise BackboneError(f"cannot load model '{name_or_path}': no such file or directory")
    return name_or_path, gguf_file, False


def _is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def _has_tokenizer(path: str) -> bool:
    return any(
        os.path.isfile(os.path.join(path, name))
        for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    )


def _mark_embedded_base(model: PreTrainedModel, adapter_dir: str) -> None:
    """A base loaded from inside an adapter export exists nowhere else: a re-export must ship it
    again (the old folder may be replaced by the new export)."""
    source = getattr(model, _SOURCE_ATTR, None)
    if source and source.get("name_or_path"):
        base_dir = os.path.abspath(source["name_or_path"])
        if os.path.dirname(base_dir) == os.path.abspath(adapter_dir):
            setattr(model, _SOURCE_ATTR, {"name_or_path": None, "gguf_file": None})


def _adapter_base(adapter_dir: str) -> tuple[str, str | None]:
    """(base name_or_path, base gguf file) of a PEFT adapter folder, relative paths resolved."""
    sidecar = os.path.join(adapter_dir, BASE_SIDECAR)
    if os.path.isfile(sidecar):
        with open(sidecar, encoding="utf-8") as f:
            info = json.load(f)
        base, gguf = info.get("name_or_path"), info.get("gguf_file")
    else:
        with open(os.path.join(adapter_dir, "adapter_config.json"), encoding="utf-8") as f:
            base, gguf = json.load(f).get("base_model_name_or_path"), None
    if not base:
        raise BackboneError(f"cannot load model '{adapter_dir}': the adapter does not name its base model")
    # An export's embedded base lives inside the adapter folder, named relative to it.
    inside = os.path.join(adapter_dir, base)
    if not os.path.isabs(base) and os.path.isdir(inside):
        base = inside
    return base, gguf


def _offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (read at import time by huggingface_hub, so also here)."""
    constants = huggingface_hub.constants
    hub = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
    return bool(hub) or os.environ.get("TRANSFORMERS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _hub_files_only(name: str, gguf_file: str | None, label: str) -> bool:
    """How to fetch a hub id: True (local_files_only) when the Hugging Face cache has it, so that
    no network is touched at all; False once the hub has answered for it. Raises BackboneError
    when it is neither cached nor fetchable, after one try rather than one per file."""
    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        AutoConfig.from_pretrained(name, local_files_only=True, **kwargs)
        return True
    except (OSError, ValueError, KeyError):
        pass
    if _offline():
        raise BackboneError(
            f"cannot load model '{label}': not in the local Hugging Face cache and offline mode is on"
        )
    try:
        AutoConfig.from_pretrained(name, **kwargs)
    except ImportError as error:
        raise BackboneError(f"cannot load model '{label}': {_one_line(error)}") from None
    except (OSError, ValueError, KeyError) as error:
        raise BackboneError(
            f"cannot load model '{label}': not a local path, and the hub: {_one_line(error)}"
        ) from None
    return False


def _fetch(loader: Any, source: str, kwargs: dict[str, Any], files_only: bool, local: bool) -> Any:
    """``loader.from_pretrained`` cache-first; a hub id only partly cached is fetched online."""
    try:
        return loader.from_pretrained(source, local_files_only=files_only, **kwargs)
    except OSError:
        if local or not files_only or _offline():
            raise
        return loader.from_pretrained(source, local_files_only=False, **kwargs)


def _load_tokenizer(
    source: str, gguf_file: str | None, files_only: bool, label: str, local: bool = True
) -> PreTrainedTokenizerBase:
    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = _fetch(AutoTokenizer, source, kwargs, files_only, local)
    except ImportError as error:
        hint = " (pip install gguf)" if gguf_file else ""
        raise BackboneError(f"cannot load model '{label}': tokenizer: {_one_line(error)}{hint}") from None
    except (OSError, ValueError, KeyError) as error:
        raise BackboneError(f"cannot load model '{label}': tokenizer: {_one_line(error)}") from None
    if tokenizer.pad_token is None:
        # Padding positions are always masked; any existing token will do, EOS is the convention.
        if tokenizer.eos_token is None:
            raise BackboneError(
                f"cannot load model '{label}': the tokenizer has neither a pad nor an EOS token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_model(
    source: str, gguf_file: str | None, files_only: bool, dtype: str, label: str, local: bool = True
) -> PreTrainedModel:
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype)}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        model = _fetch(AutoModelForCausalLM, source, kwargs, files_only, local)
    except ImportError as error:
        hint = " (pip install gguf)" if gguf_file else ""
        raise BackboneError(f"cannot load model '{label}': {_one_line(error)}{hint}") from None
    except (OSError, ValueError, KeyError) as error:
        raise BackboneError(f"cannot load model '{label}': {_one_line(error)}") from None
    setattr(model, _SOURCE_ATTR, {"name_or_path": source, "gguf_file": gguf_file})
    return model


def _load_plain(
    source: str, gguf_file: str | None, local: bool, dtype: str, label: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A plain (non-adapter) model folder, GGUF or hub id, and its tokenizer."""
    files_only = True if local else _hub_files_only(source, gguf_file, label)
    tokenizer = _load_tokenizer(source, gguf_file, files_only, label, local)
    model = _load_model(source, gguf_file, files_only, dtype, label, local)
    _sync_special_ids(model, tokenizer)
    return model, tokenizer


def _sync_special_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the model the tokenizer's pad id when it has none (generate/loss code reads it)."""
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id


def _build_tiny(config: BackboneConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    if config.architecture == "gpt2":
        model_config: Any = GPT2Config(
            n_positions=config.max_positions,
            n_embd=config.hidden_size,
            n_layer=config.num_layers,
            n_head=config.num_heads,
            # No dropout: the same weights must give the same log-probs when sampling actions and
            # when training on them (PPO ratios), and tiny runs must be reproducible.
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
    elif config.architecture == "llama":
        # SwiGLU has three matrices: 8/3 * hidden matches a 4 * hidden GELU MLP in parameters.
        intermediate = -(-(8 * config.hidden_size // 3) // 32) * 32
        model_config = LlamaConfig(
            hidden_size=config.hidden_size,
            intermediate_size=intermediate,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            max_position_embeddings=config.max_positions,
            tie_word_embeddings=True,
            **ids,
        )
    else:
        raise BackboneError(f"unknown tiny architecture '{config.architecture}': expected 'gpt2' or 'llama'")
    if config.hidden_size % config.num_heads:
        raise BackboneError(
            f"tiny model: hidden_size {config.hidden_size} is not divisible by num_heads {config.num_heads}"
        )
    # Initialise in float32 under a private seed, then cast: the same init_seed gives the same
    # weights whatever the dtype and whatever the global RNG has been used for.
    with _forked_rng(config.init_seed):
        model = AutoModelForCausalLM.from_config(model_config)
    model = model.to(_torch_dtype(config.dtype))
    setattr(model, _SOURCE_ATTR, {"name_or_path": None, "gguf_file": None})
    return model


def lora_config(settings: LoraSettings, model: PreTrainedModel) -> LoraConfig:
    """A peft LoraConfig from LoraSettings, with per-architecture default target modules."""
    model_type = getattr(model.config, "model_type", "")
    targets = settings.target_modules or _DEFAULT_LORA_TARGETS.get(model_type)
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,  # None: peft's own per-architecture table
        fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D stores weights transposed
        task_type="CAUSAL_LM",
    )


def _load_pretrained_base(
    name_or_path: str, gguf_file: str | None, dtype: str, label: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A plain (non-adapter) pretrained model and its tokenizer."""
    source, gguf, local = _resolve_source(name_or_path, gguf_file)
    if local and _is_adapter_dir(source):
        raise BackboneError(f"cannot load model '{label}': base model '{name_or_path}' is itself an adapter")
    return _load_plain(source, gguf, local, dtype, label)


def _adapter_tokenizer(
    adapter_dir: str, base_tokenizer: PreTrainedTokenizerBase, label: str
) -> PreTrainedTokenizerBase:
    """An adapter export carries its tokenizer; prefer it over the base's (same vocabulary)."""
    if _has_tokenizer(adapter_dir):
        return _load_tokenizer(adapter_dir, None, True, label)
    return base_tokenizer


def _apply_training_mode(model: nn.Module, config: BackboneConfig) -> None:
    if not config.trainable:
        _freeze(model)


# ---------------------------------------------------------------------------------------------- build
def build_backbone(config: BackboneConfig) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """Build (or load) one player's model and tokenizer; see the module docstring for sources.

    LoRA (``config.lora``) wraps the model with peft, adapter name "default"; only the adapter
    trains. ``trainable=False`` freezes everything and puts the model in eval mode.
    Raises BackboneError (one line) when the model cannot be loaded.
    """
    if config.name_or_path is None:
        tokenizer: PreTrainedTokenizerBase = build_tiny_tokenizer(config)
        model: Any = _build_tiny(config, tokenizer)
    else:
        label = config.name_or_path
        source, gguf, local = _resolve_source(config.name_or_path, config.gguf_file)
        if local and _is_adapter_dir(source):
            base_name, base_gguf = _adapter_base(source)
            base, base_tokenizer = _load_pretrained_base(base_name, base_gguf, config.dtype, label)
            _mark_embedded_base(base, source)
            tokenizer = _adapter_tokenizer(source, base_tokenizer, label)
            try:
                with _quiet_peft():
                    model = PeftModel.from_pretrained(
                        base, source, adapter_name="default", is_trainable=config.trainable
                    )
            except (OSError, ValueError, KeyError) as error:
                raise BackboneError(f"cannot load model '{label}': adapter: {_one_line(error)}") from None
            _apply_training_mode(model, config)
            return model, tokenizer
        model, tokenizer = _load_plain(source, gguf, local, config.dtype, label)
    if config.lora is not None:
        with _forked_rng(config.init_seed):  # LoRA's A matrices are drawn at random
            model = get_peft_model(model, lora_config(config.lora, model), adapter_name="default")
    _apply_training_mode(model, config)
    return model, tokenizer


# ---------------------------------------------------------------------------------------------- export
def _clean_base_copy(peft_model: PeftModel) -> PreTrainedModel:
    """The base model without LoRA layers (peft injects them in place), as a fresh model."""
    base = peft_model.get_base_model()
    state = {}
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    with _forked_rng(0):  # the random init is overwritten; keep the global RNG untouched
        clean = type(base)(base.config)
    missing, unexpected = clean.load_state_dict(state, strict=False)
    tied = set(getattr(clean, "_tied_weights_keys", None) or [])
    problems = list(unexpected) + sorted(set(missing) - tied)
    if problems:
        raise BackboneError(
            f"cannot export the base model: its weights do not match its class ('{problems[0]}')"
        )
    clean.tie_weights()
    return clean.to(next(base.parameters()).dtype)


def _write_export(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path, adapter: str | None
) -> None:
    if isinstance(model, PeftModel):
        name = adapter or model.active_adapter
        # save_embedding_layers=False: we never resize vocabularies, and "auto" would look the
        # base model up on the hub (a network call, and a warning for an embedded base).
        model.save_pretrained(str(folder), selected_adapters=[name], save_embedding_layers=False)
        if name != "default":  # peft writes non-default adapters into a subfolder: lift it up
            sub = folder / name
            for item in sub.iterdir():
                item.rename(folder / item.name)
            sub.rmdir()
        source = getattr(model.get_base_model(), _SOURCE_ATTR, None) or {}
        base_name, base_gguf = source.get("name_or_path"), source.get("gguf_file")
        if base_name is None:
            # The base exists nowhere else (the tiny model, or one of unknown origin): ship it.
            _clean_base_copy(model).save_pretrained(str(folder / EMBEDDED_BASE_DIR))
            tokenizer.save_pretrained(str(folder / EMBEDDED_BASE_DIR))
            base_name = EMBEDDED_BASE_DIR
        info = {"name_or_path": base_name, "gguf_file": base_gguf}
        (folder / BASE_SIDECAR).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        config_path = folder / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = base_name
        config_path.write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8")
    else:
        model.save_pretrained(str(folder))  # type: ignore[operator]
    tokenizer.save_pretrained(str(folder))


def export_backbone(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike[str],
    adapter: str | None = None,
) -> Path:
    """Save a player (``save_pretrained``) so that ``BackboneConfig(name_or_path=path)`` loads it.

    A full model is saved whole; a PEFT model saves only its adapter (``adapter``, default the
    active one) plus ``reflectrl_base.json`` naming its base, and a copy of the base when it
    cannot be loaded from anywhere else (the tiny model built from scratch). Written to a
    temporary sibling folder first and renamed into place, so an interrupted export never leaves
    a half-written folder over a good one. Returns the folder.
    """
    target = Path(path).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    staging = target.parent / f".{target.name}.tmp-{tag}"
    try:
        _write_export(model, tokenizer, staging, adapter)
        if target.exists():
            # Directories cannot be swapped atomically: move the old one aside first, then
            # drop it only once the new one is in place.
            retired = target.parent / f".{target.name}.old-{tag}"
            target.rename(retired)
            staging.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------- two players
def _shared_base_key(config: BackboneConfig) -> tuple[str, str | None, str] | None:
    """The pretrained base a LoRA player adapts (name, gguf, dtype), or None if not a LoRA player."""
    if config.name_or_path is None:
        return None
    source, gguf, local = _resolve_source(config.name_or_path, config.gguf_file)
    if local and _is_adapter_dir(source):
        base, base_gguf = _adapter_base(source)
        base_source, base_gguf, _ = _resolve_source(base, base_gguf)
        return base_source, base_gguf, config.dtype
    if config.lora is None:
        return None
    return source, gguf, config.dtype


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for a block, restoring each one's own mode afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


class TwoPlayerBackbone(nn.Module):
    """The reflection and the policy player's models, sharing one base model where possible.

    Shared mode: both configs adapt the same pretrained base (same ``name_or_path``/``gguf_file``
    and dtype, or adapter folders over it) with LoRA (``lora`` set, or an adapter folder). The
    base is loaded once, frozen, and carries two adapters named "reflection" and "policy";
    ``model_for`` returns the same PeftModel for both and ``use(player)`` activates the player's
    adapter for a block. Otherwise (e.g. the tiny default, or a full fine-tune) two separate
    models are built and ``use`` merely yields the player's model.

    In both modes a player is trainable exactly when its config's ``trainable`` is true (set
    ``trainable=False`` on the reflection config for RL: it is then frozen, and ``use``
    evaluates it in eval mode). The requires_grad flags never change when switching adapters
    (peft's ``set_adapter`` would toggle them; they are restored), so an optimiser over
    ``trainable_parameters()`` trains only the trainable players. As an ``nn.Module`` it moves
    with ``.to(device)`` and its parameters appear once in ``state_dict``.
    """

    def __init__(self, reflection: BackboneConfig, policy: BackboneConfig) -> None:
        super().__init__()
        self.configs = {"reflection": reflection, "policy": policy}
        key = _shared_base_key(reflection)
        self.shared_base = key is not None and key == _shared_base_key(policy)
        if self.shared_base:
            assert key is not None
            self.shared: PeftModel = self._build_shared(key)
            self.models = None
            self._tokenizers = {player: self._shared_tokenizer for player in PLAYERS}
        else:
            built = {player: build_backbone(self.configs[player]) for player in PLAYERS}
            self.models = nn.ModuleDict({player: built[player][0] for player in PLAYERS})
            self._tokenizers = {player: built[player][1] for player in PLAYERS}
        self.train(True)

    # ------------------------------------------------------------------ building
    def _build_shared(self, key: tuple[str, str | None, str]) -> PeftModel:
        base_name, base_gguf, dtype = key
        label = self.configs["reflection"].name_or_path or base_name
        base, tokenizer = _load_pretrained_base(base_name, base_gguf, dtype, label)
        base.requires_grad_(False)
        model: Any = base
        for player in PLAYERS:
            config = self.configs[player]
            assert config.name_or_path is not None
            source, _, local = _resolve_source(config.name_or_path, config.gguf_file)
            if local and _is_adapter_dir(source):
                _mark_embedded_base(base, source)
                if player == "reflection":
                    tokenizer = _adapter_tokenizer(source, tokenizer, config.name_or_path)
                try:
                    with _quiet_peft():
                        if isinstance(model, PeftModel):
                            model.load_adapter(source, adapter_name=player, is_trainable=config.trainable)
                        else:
                            model = PeftModel.from_pretrained(
                                model, source, adapter_name=player, is_trainable=config.trainable
                            )
                except (OSError, ValueError, KeyError) as error:
                    raise BackboneError(
                        f"cannot load model '{config.name_or_path}': adapter: {_one_line(error)}"
                    ) from None
            else:
                assert config.lora is not None
                settings = lora_config(config.lora, base)
                with _forked_rng(config.init_seed):
                    if isinstance(model, PeftModel):
                        model.add_adapter(player, settings)
                    else:
                        model = get_peft_model(model, settings, adapter_name=player)
        self._shared_tokenizer = tokenizer
        self._adapter_params = {
            player: [p for name, p in model.named_parameters() if player in name.split(".")]
            for player in PLAYERS
        }
        model.set_adapter("policy")
        self._restore_grad_flags(model)
        return model

    def _restore_grad_flags(self, model: nn.Module) -> None:
        """Adapter params train iff their player is trainable; the base never (peft toggles them)."""
        for player in PLAYERS:
            flag = self.configs[player].trainable
            for param in self._adapter_params[player]:
                param.requires_grad_(flag)

    # ------------------------------------------------------------------ access
    def model_for(self, player: str) -> PreTrainedModel | PeftModel:
        """The player's model. In shared mode it is the same PeftModel for both players: run it
        inside ``use(player)`` so that the right adapter is active."""
        self._check(player)
        if self.shared_base:
            return self.shared
        assert self.models is not None
        return self.models[player]  # type: ignore[return-value]

    def tokenizer_for(self, player: str) -> PreTrainedTokenizerBase:
        self._check(player)
        return self._tokenizers[player]

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer both players share (raises if two separate models' vocabularies differ)."""
        first, second = (self._tokenizers[p] for p in PLAYERS)
        if first is not second and first.get_vocab() != second.get_vocab():
            raise BackboneError("the two players use different tokenizers: use tokenizer_for(player)")
        return first

    @contextlib.contextmanager
    def use(self, player: str) -> Iterator[PreTrainedModel | PeftModel]:
        """Make ``player`` the one that runs, for a block: yields its model with its adapter active
        (shared mode) and, for a frozen player, in eval mode. Restores everything on exit."""
        self._check(player)
        model = self.model_for(player)
        frozen = not self.configs[player].trainable
        with contextlib.ExitStack() as stack:
            if self.shared_base:
                previous = self.shared.active_adapter
                self.shared.set_adapter(player)
                self._restore_grad_flags(self.shared)
                stack.callback(self._switch_back, previous)
            if frozen:
                stack.enter_context(eval_mode(model))
            yield model

    def _switch_back(self, adapter: str) -> None:
        self.shared.set_adapter(adapter)
        self._restore_grad_flags(self.shared)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that train (each once): the trainable players' adapters or full weights."""
        seen: set[int] = set()
        params = []
        for param in self.parameters():
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                params.append(param)
        return params

    def train(self, mode: bool = True) -> TwoPlayerBackbone:
        """Lightning calls this on every module; a frozen separate player stays in eval mode."""
        super().train(mode)
        if not self.shared_base and self.models is not None:
            for player in PLAYERS:
                if not self.configs[player].trainable:
                    self.models[player].eval()
        return self

    def export(self, player: str, path: str | os.PathLike[str]) -> Path:
        """``export_backbone`` of one player (its adapter only, in shared mode)."""
        adapter = player if self.shared_base else None
        return export_backbone(self.model_for(player), self.tokenizer_for(player), path, adapter=adapter)

    @staticmethod
    def _check(player: str) -> None:
        if player not in PLAYERS:
            raise ValueError(f"unknown player '{player}': expected one of {PLAYERS}")


def replace_config(config: BackboneConfig, **changes: Any) -> BackboneConfig:
    """A copy of a BackboneConfig with some fields changed (e.g. ``trainable=False``)."""
    return dataclasses.replace(config, **changes)
