"""Pure language-model operations over ``(model, tokenizer)``: no Lightning, no prompts built here.

* ``encode_choice_batch`` + ``choice_log_probs``: the policy's distribution over the enumerated
  valid actions, from ONE forward pass per batch.
* ``choice_log_probs_per_action``: the same scores, one forward per (prompt, label) pair (the
  SayCan-style baseline, and the brute-force reference of the tests).
* ``completion_nll`` / ``completion_nll_sum``: SFT loss of a completion given a prompt.
* ``generate_reflections``: batched, seedable one-line generation with a KV cache.

Sequence layout used throughout: prompts are LEFT-padded so that every row's prompt ends at the
same index; what follows the prompt (choice labels, completions) starts at that index and is
right-padded. Position ids are explicit (0 at each row's first real token), so padding never
changes a result. Because every position that is scored lies in the final block, the forward
pass asks only for the last ``K`` logits (``logits_to_keep``): with a 150k-token vocabulary that
is the difference between megabytes and gigabytes of logits.

Prompts longer than ``max_length`` (counting what is appended after them) are cut from the LEFT:
the end of a prompt (the action list and the answer marker) is what must survive. A tokenizer's
leading special tokens (a BOS) are kept in front of the cut prompt.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from reflectrl.prompts import choice_labels

TERMINATOR = "\n"


# ---------------------------------------------------------------------------------------------- helpers
def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens the tokenizer puts in front of a text (e.g. Llama's BOS); [] for the byte tokenizer."""
    probe = "a"
    with_special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return list(with_special[:start])
    return []


def _encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _cut_left(ids: list[int], budget: int) -> tuple[list[int], bool]:
    """Keep the last ``budget`` tokens; (kept, whether anything was cut)."""
    if budget < 1:
        raise ValueError("max_length leaves no room for the prompt")
    return (ids[-budget:], True) if len(ids) > budget else (ids, False)


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (whose forward takes **kwargs)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _attention_mask_for(model: nn.Module, mask: Tensor) -> Tensor:
    """A choice batch's attention mask in the form the model's attention implementation reads.

    A packed batch has a 4-D boolean mask (True: may attend), which transformers passes to the
    attention layers as it is. SDPA reads booleans; eager attention *adds* the mask to the scores,
    where True / False would add 1 / 0 and mask nothing, so it gets 0 / the dtype's minimum.
    Flash attention takes no 4-D mask at all: a clear error instead of wrong scores.
    """
    if mask.dim() != 4:
        return mask
    implementation = str(getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa")
    if implementation == "sdpa":
        return mask
    if "flash" in implementation:
        raise ValueError(
            f"attn_implementation {implementation!r} cannot score multi-token labels (they need a 4-D "
            "attention mask): use 'sdpa' or 'eager'"
        )
    dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def _logits_kwargs(model: nn.Module, keep: int) -> dict[str, Any]:
    """``logits_to_keep=keep`` when the model supports it (all current transformers LMs do)."""
    params = inspect.signature(_unwrap(model).forward).parameters
    return {"logits_to_keep": keep} if "logits_to_keep" in params else {}


def max_positions(model: nn.Module) -> int | None:
    """The model's position limit (``max_position_embeddings`` / ``n_positions``), None if unknown."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    for module, training in modes:
        module.training = training


# ---------------------------------------------------------------------------------------------- choices
class _LabelPlans:
    """Per-tokenizer cache: how the labels of an n-action row are scored.

    Returns (packed, sequences): ``packed=False`` when every label "1".."n" is one distinct token
    (score = log p(label token) at the prompt's last position, no terminator); otherwise each
    label's tokens followed by the terminator's tokens, which makes the set prefix-free so that
    the scores form a proper distribution over complete answers.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, terminator: str) -> None:
        self.tokenizer = tokenizer
        self.terminator = _encode(tokenizer, [terminator])[0]
        self.plans: dict[int | tuple[str, ...], tuple[bool, list[list[int]]]] = {}

    def get(self, choices: int | Sequence[str]) -> tuple[bool, list[list[int]]]:
        """Plan for the answers "1".."n" (``choices`` = n) or for the given answer texts."""
        key: int | tuple[str, ...] = choices if isinstance(choices, int) else tuple(choices)
        if isinstance(key, int) and key < 1 or not isinstance(key, int) and not key:
            raise ValueError(f"every row needs at least one valid action (got {choices!r})")
        if key not in self.plans:
            texts = choice_labels(key) if isinstance(key, int) else list(key)
            labels = _encode(self.tokenizer, texts)
            if any(not ids for ids in labels):
                raise ValueError("the tokenizer encodes a choice label to no tokens")
            single = all(len(ids) == 1 for ids in labels) and len({ids[0] for ids in labels}) == len(labels)
            if single:
                self.plans[key] = (False, labels)
            else:
                if not self.terminator:
                    raise ValueError("the terminator encodes to no tokens")
                sequences = [ids + self.terminator for ids in labels]
                as_tuples = [tuple(s) for s in sequences]
                for i, a in enumerate(as_tuples):
                    for j, b in enumerate(as_tuples):
                        if i != j and b[: len(a)] == a:
                            raise ValueError(
                                f"choice labels are not prefix-free for this tokenizer ({texts[i]!r}, {texts[j]!r})"
                            )
                self.plans[key] = (True, sequences)
        return self.plans[key]


@dataclass
class ChoiceBatch:
    """A tokenised batch of policy prompts ready for ``choice_log_probs`` (see the module doc).

    ``target_index[b, c, t]`` is the index, among the last ``logits_to_keep`` positions, whose
    logits predict token ``target_ids[b, c, t]`` of choice ``c``'s answer; ``target_mask`` marks
    real entries and ``choice_mask`` the row's valid choices.
    """

    input_ids: Tensor
    """[B, L] token ids (prompt left-padded, packed label tokens after it)."""
    attention_mask: Tensor
    """[B, L] 0/1 mask, or [B, 1, L, L] boolean (True = may attend) when labels are packed."""
    position_ids: Tensor
    """[B, L] positions; each packed label restarts at its row's prompt length."""
    target_index: Tensor
    """[B, C, T] index into the kept logits."""
    target_ids: Tensor
    """[B, C, T] the answer tokens (label tokens, then the terminator when packed)."""
    target_mask: Tensor
    """[B, C, T] True where target_ids is real."""
    choice_mask: Tensor
    """[B, C] True for the row's valid choices."""
    prompt_lengths: Tensor
    """[B] prompt tokens actually used (after truncation, including a BOS)."""
    truncated: Tensor
    """[B] True where the prompt was cut from the left."""
    logits_to_keep: int
    """How many final positions' logits the forward pass must return."""
    branch_ids: Tensor | None = None
    """[B, C, T, A] with ``trie`` scoring: the tokens any valid answer sharing choice ``c``'s first
    ``t`` tokens has at position ``t`` (``target_ids[b, c, t]`` among them); None otherwise."""
    branch_mask: Tensor | None = None
    """[B, C, T, A] True where ``branch_ids`` is real."""

    def to(self, device: torch.device | str) -> ChoiceBatch:
        """The same batch with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(device)
        return replace(self, **moved)

    @property
    def num_choices(self) -> Tensor:
        """[B] number of valid choices per row."""
        return self.choice_mask.sum(dim=-1)


def _prepare_choice_rows(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    num_choices: Sequence[int | Sequence[str]],
    max_length: int | None,
    terminator: str,
) -> list[tuple[list[int], bool, list[list[int]], bool]]:
    """Per row: (prompt ids incl. BOS, truncated?, answer sequences, packed?)."""
    if len(prompts) != len(num_choices):
        raise ValueError(f"{len(prompts)} prompts but {len(num_choices)} choice lists")
    plans = _LabelPlans(tokenizer, terminator)
    prefix = _special_prefix(tokenizer)
    rows = []
    for ids, n in zip(_encode(tokenizer, prompts), num_choices, strict=True):
        packed, sequences = plans.get(n if isinstance(n, Sequence) else int(n))
        truncated = False
        if max_length is not None:
            # The full answer (label, terminator) must fit after the prompt.
            longest = max(len(s) for s in sequences)
            ids, truncated = _cut_left(ids, max_length - longest - len(prefix))
        prompt = prefix + ids
        if not prompt:
            raise ValueError("an empty prompt leaves nothing to predict the answer from")
        rows.append((prompt, truncated, sequences, packed))
    return rows


def encode_choice_batch(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    num_choices: Sequence[int | Sequence[str]],
    max_length: int | None = None,
    terminator: str = TERMINATOR,
    trie: bool = False,
) -> ChoiceBatch:
    """Tokenise policy prompts and lay out the scoring of each row's labels ``"1".."n"``.

    A row's ``num_choices`` entry is n (answers "1".."n") or the list of its answer texts (the
    ``labels="commands"`` style, see ``reflectrl.prompts.answer_choices``).

    Rows whose labels are all single distinct tokens (e.g. up to 9 actions with the byte
    tokenizer) are scored from the prompt's last position alone. Other rows pack every label's
    tokens after the prompt in the same sequence, each label attending to the prompt and to its
    own earlier tokens only (4D mask), with positions restarting at the prompt length, so one
    forward pass scores all labels exactly as separate runs would. ``max_length`` bounds prompt
    + longest answer; longer prompts lose tokens at the left.

    ``trie=True`` also records, for every answer token, the tokens the row's valid answers allow
    at that point (``branch_ids``), for ``choice_log_probs``'s trie scoring.
    """
    rows = _prepare_choice_rows(tokenizer, prompts, num_choices, max_length, terminator)
    batch_size = len(rows)
    if batch_size == 0:
        raise ValueError("encode_choice_batch needs at least one prompt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompt_len = max(len(r[0]) for r in rows)
    # Tokens fed after the prompt: every answer but its last token (nothing is predicted from it).
    appended = [sum(len(s) - 1 for s in seqs) if packed else 0 for _, _, seqs, packed in rows]
    total = prompt_len + max(appended)
    max_choices = max(len(r[2]) for r in rows)
    max_answer = max(len(s) for r in rows for s in r[2])

    input_ids = torch.full((batch_size, total), pad, dtype=torch.long)
    position_ids = torch.zeros((batch_size, total), dtype=torch.long)
    segment = torch.full((batch_size, total), -1, dtype=torch.long)  # -1 pad, 0 prompt, k+1 label k
    target_index = torch.zeros((batch_size, max_choices, max_answer), dtype=torch.long)
    target_ids = torch.full((batch_size, max_choices, max_answer), pad, dtype=torch.long)
    target_mask = torch.zeros((batch_size, max_choices, max_answer), dtype=torch.bool)
    choice_mask = torch.zeros((batch_size, max_choices), dtype=torch.bool)
    first_kept = prompt_len - 1  # sequence index of kept logit 0: every prompt's last token

    for b, (prompt, _, sequences, packed) in enumerate(rows):
        length = len(prompt)
        start = prompt_len - length
        input_ids[b, start:prompt_len] = torch.tensor(prompt)
        position_ids[b, start:prompt_len] = torch.arange(length)
        segment[b, start:prompt_len] = 0
        cursor = prompt_len
        for c, answer in enumerate(sequences):
            choice_mask[b, c] = True
            target_ids[b, c, : len(answer)] = torch.tensor(answer)
            target_mask[b, c, : len(answer)] = True
            if not packed:
                continue  # target_index stays 0: the prompt's last position
            fed = answer[:-1]
            span = slice(cursor, cursor + len(fed))
            input_ids[b, span] = torch.tensor(fed, dtype=torch.long)
            position_ids[b, span] = torch.arange(length, length + len(fed))
            segment[b, span] = c + 1
            # token 0 is predicted from the prompt's end, token t from the label's token t-1
            predictors = [first_kept] + list(range(cursor, cursor + len(fed)))
            target_index[b, c, : len(answer)] = torch.tensor(predictors) - first_kept
            cursor += len(fed)

    if any(appended):
        query, key = segment[:, :, None], segment[:, None, :]
        causal = torch.ones(total, total, dtype=torch.bool).tril()
        allowed = causal & (key >= 0) & ((key == 0) | (key == query))
        # Padding queries attend to themselves only: no fully masked row, so no NaN anywhere.
        allowed |= torch.eye(total, dtype=torch.bool)
        attention_mask = allowed[:, None]
    else:
        attention_mask = (segment >= 0).long()

    branch_ids = branch_mask = None
    if trie:
        branch_ids, branch_mask = _branches([r[2] for r in rows], max_choices, max_answer)
    return ChoiceBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        target_index=target_index,
        target_ids=target_ids,
        target_mask=target_mask,
        choice_mask=choice_mask,
        prompt_lengths=torch.tensor([len(r[0]) for r in rows], dtype=torch.long),
        truncated=torch.tensor([r[1] for r in rows], dtype=torch.bool),
        logits_to_keep=total - first_kept,
        branch_ids=branch_ids,
        branch_mask=branch_mask,
    )


def _branches(answers: list[list[list[int]]], max_choices: int, max_answer: int) -> tuple[Tensor, Tensor]:
    """Per row, choice and answer position: the next tokens the row's answers allow after that prefix."""
    per_row: list[list[list[list[int]]]] = []
    width = 1
    for sequences in answers:
        following: dict[tuple[int, ...], set[int]] = {}
        for sequence in sequences:
            for t, token in enumerate(sequence):
                following.setdefault(tuple(sequence[:t]), set()).add(token)
        row = [[sorted(following[tuple(sequence[:t])]) for t in range(len(sequence))] for sequence in sequences]
        width = max([width] + [len(allowed) for choice in row for allowed in choice])
        per_row.append(row)
    branch_ids = torch.zeros((len(answers), max_choices, max_answer, width), dtype=torch.long)
    branch_mask = torch.zeros((len(answers), max_choices, max_answer, width), dtype=torch.bool)
    for b, row in enumerate(per_row):
        for c, choice in enumerate(row):
            for t, allowed in enumerate(choice):
                branch_ids[b, c, t, : len(allowed)] = torch.tensor(allowed)
                branch_mask[b, c, t, : len(allowed)] = True
    # Padding entries get one (ignored) token: no all -inf logsumexp, so no NaN in any gradient.
    branch_mask[..., 0] = True
    return branch_ids, branch_mask


def _normalise(scores: Tensor, choice_mask: Tensor) -> Tensor:
    """Log-softmax over each row's valid choices; -inf in padding columns."""
    scores = scores.masked_fill(~choice_mask, float("-inf"))
    return scores - torch.logsumexp(scores, dim=-1, keepdim=True)


def choice_log_probs(model: nn.Module, batch: ChoiceBatch) -> Tensor:
    """[B, max_choices] log-probabilities of each row's labels, renormalised over its valid labels.

    Padding columns are -inf, so sampling from ``exp()`` never yields an invalid choice. One
    forward pass; keeps the autograd graph (wrap in ``torch.no_grad`` for acting). float32.
    A batch encoded with ``trie=True`` is scored token by token against the valid continuations
    only (see ``ActingSettings.choice_scoring``); otherwise against the whole vocabulary.
    """
    return choice_log_probs_and_state(model, batch, with_state=False)[0]


def choice_log_probs_and_state(
    model: nn.Module, batch: ChoiceBatch, with_state: bool = True
) -> tuple[Tensor, Tensor | None]:
    """``choice_log_probs`` plus the last layer's hidden state at the prompt's final token.

    The hidden state ([B, hidden], same forward pass) feeds a critic head, which thus reads the
    whole prompt (the original code's critic saw only the last 20 tokens).
    """
    batch = batch.to(_device_of(model))
    keep = batch.logits_to_keep
    output = model(
        input_ids=batch.input_ids,
        attention_mask=_attention_mask_for(model, batch.attention_mask),
        position_ids=batch.position_ids,
        use_cache=False,
        output_hidden_states=with_state,
        **_logits_kwargs(model, keep),
    )
    state = None
    if with_state:
        hidden = output.hidden_states[-1]
        # The kept position that predicts every label's first token is the prompt's last token.
        last_prompt = hidden.shape[1] - keep + batch.target_index[:, 0, 0]
        state = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_prompt].float()
    logits = output.logits[:, -keep:].float()
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None, None]
    if batch.branch_ids is None:
        # sequence scoring: log p(answer tokens), the whole vocabulary competing at every token
        token_log_probs = logits.log_softmax(dim=-1)[rows, batch.target_index, batch.target_ids]  # [B, C, T]
    else:
        # trie scoring: at every token only the tokens some valid answer continues with compete, so
        # the tokens after an answer's distinguishing prefix cost nothing (a long unfamiliar name
        # is not outscored by a short familiar one merely for its length)
        allowed = logits[rows[..., None], batch.target_index[..., None], batch.branch_ids]  # [B, C, T, A]
        allowed = allowed.masked_fill(~batch.branch_mask, float("-inf"))
        target = logits[rows, batch.target_index, batch.target_ids]
        token_log_probs = target - torch.logsumexp(allowed, dim=-1)
    scores = torch.where(batch.target_mask, token_log_probs, torch.zeros_like(token_log_probs)).sum(dim=-1)
    return _normalise(scores, batch.choice_mask), state


def choice_log_probs_per_action(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    num_choices: Sequence[int | Sequence[str]],
    max_length: int | None = None,
    terminator: str = TERMINATOR,
) -> Tensor:
    """The same result as ``choice_log_probs``, one forward per (prompt, label) pair.

    The SayCan-style baseline: each answer is scored in its own unpadded sequence. Kept for the
    throughput benchmark and as the tests' brute-force reference. Keeps the autograd graph.
    """
    rows = _prepare_choice_rows(tokenizer, prompts, num_choices, max_length, terminator)
    device = _device_of(model)
    max_choices = max(len(r[2]) for r in rows)
    scores = torch.zeros((len(rows), max_choices), device=device)
    mask = torch.zeros((len(rows), max_choices), dtype=torch.bool, device=device)
    for b, (prompt, _, sequences, _) in enumerate(rows):
        for c, answer in enumerate(sequences):
            ids = torch.tensor([prompt + answer[:-1]], device=device)
            logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1 :].float()
            targets = torch.tensor(answer, device=device)
            token_log_probs = logits.log_softmax(dim=-1).gather(-1, targets[:, None]).squeeze(-1)
            scores[b, c] = token_log_probs.sum()
            mask[b, c] = True
    return _normalise(scores, mask)


# ---------------------------------------------------------------------------------------------- SFT loss
def completion_nll_sum(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    completions: list[str],
    max_length: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Summed NLL of each completion (+ EOS) given its prompt, and the number of tokens scored.

    Returns ``(nll_sum [B], token_count [B])`` (float32, long) so that callers can average
    exactly over tokens across batches. Prompt tokens carry no loss. The completion is followed
    by EOS so the model learns to stop. With ``max_length``, prompt + completion + EOS is cut to
    fit: the prompt from the left first; a completion that alone does not fit is cut at its end
    (then without EOS), keeping one prompt token to predict from.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if not prompts:
        raise ValueError("completion_nll needs at least one prompt")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token")
    prefix = _special_prefix(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for ids, answer in zip(_encode(tokenizer, prompts), _encode(tokenizer, completions), strict=True):
        answer = answer + [eos]
        if max_length is not None:
            room = max_length - len(prefix) - 1  # at least one prompt token
            if room < 1:
                raise ValueError(f"max_length {max_length} is too small")
            answer = answer[:room]
            ids, _ = _cut_left(ids, max_length - len(prefix) - len(answer))
        prompt = prefix + ids
        if not prompt:
            raise ValueError("an empty prompt leaves nothing to predict the completion from")
        rows.append((prompt, answer))

    prompt_len = max(len(p) for p, _ in rows)
    answer_len = max(len(a) for _, a in rows)
    total = prompt_len + answer_len - 1  # the last answer token is a target only
    batch_size = len(rows)
    input_ids = torch.full((batch_size, total), pad, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, total), dtype=torch.long)
    position_ids = torch.zeros((batch_size, total), dtype=torch.long)
    targets = torch.full((batch_size, answer_len), -100, dtype=torch.long)
    for b, (prompt, answer) in enumerate(rows):
        sequence = prompt + answer[:-1]
        start = prompt_len - len(prompt)
        input_ids[b, start : start + len(sequence)] = torch.tensor(sequence)
        attention_mask[b, start : start + len(sequence)] = 1
        position_ids[b, start : start + len(sequence)] = torch.arange(len(sequence))
        targets[b, : len(answer)] = torch.tensor(answer)

    device = _device_of(model)
    output = model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=False,
        **_logits_kwargs(model, answer_len),
    )
    # Kept logit j (sequence index prompt_len - 1 + j) predicts answer token j.
    logits = output.logits[:, -answer_len:].float()
    targets = targets.to(device)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    nll = nll.view(batch_size, answer_len)
    return nll.sum(dim=-1), (targets != -100).sum(dim=-1)


def completion_nll(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    completions: list[str],
    max_length: int | None = None,
) -> Tensor:
    """[B] mean per-token NLL of each completion (+ EOS) given its prompt; see completion_nll_sum."""
    total, count = completion_nll_sum(model, tokenizer, prompts, completions, max_length)
    return total / count.clamp(min=1)


# ---------------------------------------------------------------------------------------------- generation
def _stop_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    generation_config = getattr(model, "generation_config", None)
    extra = getattr(generation_config, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, list | tuple):
        ids.update(int(i) for i in extra)
    return ids


def generate_reflections(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 96,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    max_length: int | None = None,
) -> list[str]:
    """One line of text per prompt: batched decoding with a KV cache, stopped at EOS or newline.

    Greedy when ``temperature == 0``; otherwise samples with ``generator`` (deterministic for a
    seeded generator, global RNG untouched; it may live on any device). The pad token is never
    generated. Returns the text before the first newline, special tokens removed, stripped.
    Runs under ``torch.no_grad`` in eval mode and restores every submodule's mode. Prompts are cut
    from the left so prompt + ``max_new_tokens`` fits ``max_length`` (default: the model's
    maximum number of positions, when its config states one).
    """
    if not prompts:
        return []
    if max_new_tokens < 1:
        return [""] * len(prompts)
    device = _device_of(model)
    limit = max_length if max_length is not None else max_positions(model)
    prefix = _special_prefix(tokenizer)
    rows = []
    for ids in _encode(tokenizer, prompts):
        if limit is not None:
            ids, _ = _cut_left(ids, limit - max_new_tokens - len(prefix))
        rows.append(prefix + ids)
        if not rows[-1]:
            raise ValueError("an empty prompt leaves nothing to generate from")

    batch_size = len(rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompt_len = max(len(r) for r in rows)
    input_ids = torch.full((batch_size, prompt_len), pad, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, prompt_len), dtype=torch.long)
    position_ids = torch.zeros((batch_size, prompt_len), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, prompt_len - len(row) :] = torch.tensor(row)
        attention_mask[b, prompt_len - len(row) :] = 1
        position_ids[b, prompt_len - len(row) :] = torch.arange(len(row))
    input_ids, attention_mask, position_ids = (
        t.to(device) for t in (input_ids, attention_mask, position_ids)
    )
    next_position = torch.tensor([len(r) for r in rows], device=device)

    stop_ids = _stop_ids(model, tokenizer)
    stop_tensor = torch.tensor(sorted(stop_ids), device=device, dtype=torch.long)
    newline: dict[int, bool] = {}  # token id -> its text contains a newline (decoded lazily)
    banned = pad if pad not in stop_ids else None
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    generated: list[Tensor] = []

    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            output = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **_logits_kwargs(model, 1),
            )
            for step in range(max_new_tokens):
                logits = output.logits[:, -1].float()
                if banned is not None:
                    logits[:, banned] = float("-inf")
                if temperature > 0:
                    probs = (logits / temperature).softmax(dim=-1)
                    sample_device = generator.device if generator is not None else probs.device
                    token = torch.multinomial(probs.to(sample_device), 1, generator=generator)
                    token = token.squeeze(-1).to(device)
                else:
                    token = logits.argmax(dim=-1)
                token = torch.where(finished, torch.full_like(token, pad), token)
                generated.append(token)
                stops = torch.isin(token, stop_tensor)
                for t in set(token.tolist()) - newline.keys():
                    newline[t] = "\n" in tokenizer.decode([t])
                with_newline = [t for t, has in newline.items() if has]
                if with_newline:
                    stops |= torch.isin(token, torch.tensor(with_newline, device=device))
                finished |= stops
                if bool(finished.all()) or step == max_new_tokens - 1:
                    break
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch_size, 1)], dim=1)
                output = model(
                    input_ids=token[:, None],
                    attention_mask=attention_mask,
                    position_ids=next_position[:, None],
                    past_key_values=output.past_key_values,
                    use_cache=True,
                )
                next_position = next_position + 1
    finally:
        _restore_modes(modes)

    tokens = torch.stack(generated, dim=1).tolist()
    texts = []
    for row in tokens:
        kept = []
        for t in row:
            if t in stop_ids:
                break
            kept.append(t)
            if newline.get(t, False):
                break
        text = tokenizer.decode(kept, skip_special_tokens=True)
        texts.append(text.split("\n", 1)[0].replace("\r", " ").strip())
    return texts
