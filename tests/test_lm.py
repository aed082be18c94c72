"""LM operations: choice scoring (vs brute force), completion NLL, reflection generation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reflectrl.backbone import BackboneConfig, build_backbone
from reflectrl.lm import (
    ChoiceBatch,
    choice_log_probs,
    choice_log_probs_per_action,
    completion_nll,
    completion_nll_sum,
    encode_choice_batch,
    generate_reflections,
)
from reflectrl.prompts import answer_choices, choice_labels, policy_prompt, reflection_prompt

ACTIONS = [f"action number {i}" for i in range(30)]


def opinionated(arch: str) -> tuple[nn.Module, object]:
    """A tiny model with large random weights: sharp, position-sensitive distributions, so a
    wrong mask or position id changes the scores far beyond the tolerance."""
    model, tokenizer = build_backbone(
        BackboneConfig(architecture=arch, num_layers=2, hidden_size=64, num_heads=4)
    )
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model, tokenizer


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request: pytest.FixtureRequest) -> tuple[nn.Module, object]:
    return opinionated(request.param)


def prompts_for(counts: list[int]) -> list[str]:
    """Policy prompts of clearly different lengths."""
    observations = ["x", "Taxi at (1, 2); passenger at R\n+---+\n|R: |\n+---+", "a" * 7, "héllo ✓ " * 3]
    return [
        policy_prompt(observations[i % len(observations)], "go north" if i % 2 else None, ACTIONS[:n])
        for i, n in enumerate(counts)
    ]


# ---------------------------------------------------------------------------------------------- choices
CASES = {
    "single-token labels": [6, 3, 6, 1],
    "12 labels (1 is a prefix of 12)": [12, 6, 12, 2],
    "30 labels": [30, 9, 12, 30],
}


@pytest.mark.parametrize("counts", CASES.values(), ids=CASES.keys())
def test_choice_log_probs_match_brute_force(lm, counts: list[int]) -> None:
    model, tokenizer = lm
    prompts = prompts_for(counts)
    batch = encode_choice_batch(tokenizer, prompts, counts)
    assert batch.attention_mask.dim() == (2 if max(counts) <= 9 else 4)  # packing only when needed
    with torch.no_grad():
        scores = choice_log_probs(model, batch)
        reference = choice_log_probs_per_action(model, tokenizer, prompts, counts)
    assert scores.shape == (len(counts), max(counts))
    valid = batch.choice_mask
    assert torch.equal(valid, torch.isfinite(scores)) and torch.equal(valid, torch.isfinite(reference))
    torch.testing.assert_close(scores[valid], reference[valid], atol=1e-5, rtol=0)
    assert scores[valid].std() > 0.3  # far from uniform: the comparison means something
    assert torch.all(scores[~valid] == float("-inf"))
    torch.testing.assert_close(scores.exp().sum(dim=-1), torch.ones(len(counts)))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_labels_score_the_same_under_eager_attention(arch: str) -> None:
    """Eager attention adds the mask to the scores: a boolean 4-D mask would mask nothing there."""
    model, tokenizer = opinionated(arch)
    model.config._attn_implementation = "eager"
    counts = CASES["30 labels"]
    prompts = prompts_for(counts)
    batch = encode_choice_batch(tokenizer, prompts, counts)
    assert batch.attention_mask.dim() == 4
    with torch.no_grad():
        scores = choice_log_probs(model, batch)
        reference = choice_log_probs_per_action(model, tokenizer, prompts, counts)
    valid = batch.choice_mask
    torch.testing.assert_close(scores[valid], reference[valid], atol=1e-5, rtol=0)
    assert scores[valid].std() > 0.3


def test_flash_attention_is_refused_for_packed_labels() -> None:
    model, tokenizer = opinionated("llama")
    model.config._attn_implementation = "flash_attention_2"
    counts = [12, 3]
    batch = encode_choice_batch(tokenizer, prompts_for(counts), counts)
    with pytest.raises(ValueError, match="flash_attention_2.*sdpa"):
        choice_log_probs(model, batch)


COMMANDS = [
    ["cd ..", "cat a.py", "cat a.py.bak", "id a.py", "id b.py"],  # "cat a.py" is a prefix of "cat a.py.bak"
    ["go to shelf 1", "go to shelf 10"],
]


def test_command_answers_score_the_action_text_then_the_terminator(lm) -> None:
    """``labels="commands"``: each answer is the action's text + newline, scored in one pass."""
    model, tokenizer = lm
    prompts = [policy_prompt("Task: find a", "Done: id a.py", actions, labels="commands") for actions in COMMANDS]
    assert "- cat a.py.bak\n" in prompts[0] and "1. " not in prompts[0]
    batch = encode_choice_batch(tokenizer, prompts, COMMANDS)
    assert batch.attention_mask.dim() == 4  # multi-token answers are packed behind the prompt
    with torch.no_grad():
        scores = choice_log_probs(model, batch)
        for b, actions in enumerate(COMMANDS):
            # by hand: the byte tokenizer encodes prompt + answer as the concatenation of both
            prompt_ids = tokenizer(prompts[b])["input_ids"]
            raw = []
            for action in actions:
                ids = tokenizer(prompts[b] + action + "\n")["input_ids"]
                logits = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
                raw.append(sum(float(logits[t - 1, ids[t]]) for t in range(len(prompt_ids), len(ids))))
            expected = torch.tensor(raw) - torch.logsumexp(torch.tensor(raw), 0)
            torch.testing.assert_close(scores[b, : len(actions)], expected, atol=1e-4, rtol=0)
    assert torch.isneginf(scores[1, 2:]).all()
    assert scores[0].std() > 0.3


def test_unlisted_command_answers_are_still_scored_over_the_valid_actions_only(lm) -> None:
    """``list_actions=False``: the prompt holds no list, the answer set is the valid actions."""
    model, tokenizer = lm
    actions = COMMANDS[0]
    listed = policy_prompt("Task: find a", "Done: id a.py", actions, labels="commands")
    unlisted = policy_prompt("Task: find a", "Done: id a.py", actions, labels="commands", list_actions=False)
    assert unlisted == "Task: find a\nAnalysis: Done: id a.py\nChoice: "
    assert "cat a.py.bak" in listed and "cat a.py.bak" not in unlisted
    assert policy_prompt("Task: find a", None, actions, labels="commands", list_actions=False) == "Task: find a\nChoice: "
    with torch.no_grad():
        scores = choice_log_probs(model, encode_choice_batch(tokenizer, [unlisted], [actions]))
    assert scores.shape == (1, len(actions)) and torch.isfinite(scores).all()
    torch.testing.assert_close(scores.exp().sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="list_actions=False needs labels='commands'"):
        policy_prompt("Task: find a", None, actions, labels="numbers", list_actions=False)


def test_space_in_answer_scores_the_same_text_tokenised_as_in_the_analysis(tmp_path) -> None:
    """A subword tokenizer splits "cd summary" alone as "c", "d", ...; after the space as the analysis does."""
    actions = ["cd ..", "cd summary", "cat main.py", "id main.py"]
    analysis = "The summary folder should hold it. Step in: cd summary"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(f'{{"text": "{analysis} History: cat main.py, cd summary, id main.py"}}\n' for _ in range(50)))
    config = BackboneConfig(num_layers=1, hidden_size=32, num_heads=2, max_positions=256, tokenizer="bpe",
                            tokenizer_vocab_size=300, tokenizer_corpus=[str(corpus)])
    model, tokenizer = build_backbone(config)
    plain = policy_prompt("Task: find it", analysis, actions, labels="commands", list_actions=False)
    spaced = policy_prompt("Task: find it", analysis, actions, labels="commands", list_actions=False, space_in_answer=True)
    assert spaced == plain.removesuffix(" ") and spaced.endswith("Choice:")
    spaced_answers = answer_choices(actions, "commands", space_in_answer=True)
    assert spaced_answers == [" " + a for a in actions]
    assert [spaced + a for a in spaced_answers] == [plain + a for a in actions]  # the same texts are scored

    def tokens(text: str) -> list[str]:
        return [tokenizer.decode([i]) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]

    in_analysis = tokens(analysis)
    assert tokens(" cd summary") == in_analysis[-len(tokens(" cd summary")):]  # copyable token for token
    assert tokens("cd summary")[0] != " cd"  # without the space, the command starts differently
    batch = encode_choice_batch(tokenizer, [spaced], [spaced_answers])
    with torch.no_grad():
        scores = choice_log_probs(model, batch)
    torch.testing.assert_close(scores.exp().sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="space_in_answer=True needs labels='commands'"):
        policy_prompt("Task: find it", None, actions, labels="numbers", space_in_answer=True)
    with pytest.raises(ValueError, match="space_in_answer=True needs labels='commands'"):
        answer_choices(actions, "numbers", space_in_answer=True)


def test_trie_scoring_matches_hand_computed_branch_probabilities(lm) -> None:
    """``trie``: at each answer token only the tokens valid answers continue with compete.

    Checked by hand with separate forward passes: for every answer, the sum over its tokens of
    logit(token) - logsumexp(logits of the allowed next tokens). These already sum to one over
    the answers, and a token no other answer shares at that point costs exactly nothing.
    """
    model, tokenizer = lm
    prompts = [policy_prompt("Task: find a", "Done: id a.py", actions, labels="commands") for actions in COMMANDS]
    batch = encode_choice_batch(tokenizer, prompts, COMMANDS, trie=True)
    with torch.no_grad():
        scores = choice_log_probs(model, batch)
        for b, actions in enumerate(COMMANDS):
            answers = [tokenizer(a + "\n", add_special_tokens=False)["input_ids"] for a in actions]
            raw = []
            for answer in answers:
                prompt_ids = tokenizer(prompts[b])["input_ids"]
                logits = model(input_ids=torch.tensor([prompt_ids + answer])).logits[0]
                total = 0.0
                for t, token in enumerate(answer):
                    allowed = sorted({other[t] for other in answers if len(other) > t and other[:t] == answer[:t]})
                    row = logits[len(prompt_ids) + t - 1]
                    total += float(row[token] - torch.logsumexp(row[allowed], 0))
                raw.append(total)
            assert sum(torch.tensor(raw).exp()) == pytest.approx(1.0, abs=1e-5)  # a proper distribution as is
            torch.testing.assert_close(scores[b, : len(actions)], torch.tensor(raw), atol=1e-4, rtol=0)
        # "go to shelf 1" / "go to shelf 10": only the token after "1" (newline or "0") is a choice
        sequence = choice_log_probs(model, encode_choice_batch(tokenizer, prompts, COMMANDS))
    assert not torch.allclose(scores[0, :5], sequence[0, :5])  # the two scorings differ on multi-token answers
    assert torch.isneginf(scores[1, 2:]).all()
    # one-token labels: trie scoring is the plain softmax over the valid labels
    counts = [4, 9]
    numbered = prompts_for(counts)
    with torch.no_grad():
        plain = choice_log_probs(model, encode_choice_batch(tokenizer, numbered, counts))
        trie = choice_log_probs(model, encode_choice_batch(tokenizer, numbered, counts, trie=True))
    torch.testing.assert_close(trie, plain)


def test_trie_scoring_has_finite_gradients_with_padded_choices(lm) -> None:
    model, tokenizer = lm
    prompts = [policy_prompt("Task: find a", None, actions, labels="commands") for actions in COMMANDS]
    batch = encode_choice_batch(tokenizer, prompts, COMMANDS, trie=True)
    log_probs = choice_log_probs(model, batch)
    log_probs[0, 3].neg().backward()  # row 1 has 2 choices padded to 5, answers of unequal length
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_choice_scores_do_not_depend_on_the_batch(lm) -> None:
    model, tokenizer = lm
    counts = [30, 4, 12]
    prompts = prompts_for(counts)
    with torch.no_grad():
        together = choice_log_probs(model, encode_choice_batch(tokenizer, prompts, counts))
        for i, (prompt, n) in enumerate(zip(prompts, counts, strict=True)):
            alone = choice_log_probs(model, encode_choice_batch(tokenizer, [prompt], [n]))
            torch.testing.assert_close(together[i, :n], alone[0], atol=1e-5, rtol=0)


def test_gradients_flow_through_choice_log_probs(lm) -> None:
    model, tokenizer = lm
    counts = [12, 3]
    scores = choice_log_probs(model, encode_choice_batch(tokenizer, prompts_for(counts), counts))
    model.zero_grad()
    (-scores[0, 4] - scores[1, 2]).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)  # padding causes no NaN
    assert sum(g.abs().sum() for g in grads) > 0
    model.zero_grad()


def test_sampling_never_gives_an_invalid_choice(lm) -> None:
    model, tokenizer = lm
    counts = [2, 5]
    with torch.no_grad():
        scores = choice_log_probs(model, encode_choice_batch(tokenizer, prompts_for(counts), counts))
    picks = torch.multinomial(scores.exp(), 500, replacement=True, generator=torch.Generator().manual_seed(0))
    assert picks[0].max() < 2 and picks[1].max() < 5


def test_long_prompts_are_cut_from_the_left(lm) -> None:
    model, tokenizer = lm
    prompt = prompts_for([12])[0]
    long_prompt = "lots of irrelevant history " * 20 + prompt
    max_length = len(tokenizer(prompt)["input_ids"]) + 3  # "12" + "\n" fit after the kept part
    batch = encode_choice_batch(tokenizer, [long_prompt, prompt], [12, 12], max_length=max_length)
    assert batch.truncated.tolist() == [True, False]
    assert batch.prompt_lengths.tolist() == [max_length - 3, max_length - 3]
    with torch.no_grad():
        scores = choice_log_probs(model, batch)
    torch.testing.assert_close(scores[0], scores[1])  # the kept end is exactly the short prompt


def test_choice_batch_helpers_and_errors() -> None:
    _, tokenizer = build_backbone(BackboneConfig(num_layers=1, hidden_size=32, num_heads=2))
    batch = encode_choice_batch(tokenizer, ["a: ", "bb: "], [3, 11])
    assert isinstance(batch.to("cpu"), ChoiceBatch)
    assert batch.num_choices.tolist() == [3, 11]
    assert all(len(tokenizer(label)["input_ids"]) == 1 for label in choice_labels(9))
    with pytest.raises(ValueError, match="at least one"):
        encode_choice_batch(tokenizer, ["a"], [0])
    with pytest.raises(ValueError):
        encode_choice_batch(tokenizer, ["a", "b"], [2])


# ---------------------------------------------------------------------------------------------- NLL
def test_completion_nll_equals_hand_computed_cross_entropy(lm) -> None:
    model, tokenizer = lm
    prompts, completions = ["ab", "a much longer prompt: "], ["c", "go north"]
    with torch.no_grad():
        total, count = completion_nll_sum(model, tokenizer, prompts, completions)
        mean = completion_nll(model, tokenizer, prompts, completions)
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            prompt_ids = list(prompt.encode())
            target = list(completion.encode()) + [tokenizer.eos_token_id]
            full = model(input_ids=torch.tensor([prompt_ids + target])).logits[0]
            # position p predicts token p + 1: completion tokens only, the prompt carries no loss
            expected = F.cross_entropy(full[len(prompt_ids) - 1 : -1], torch.tensor(target), reduction="sum")
            assert count[i] == len(target)
            torch.testing.assert_close(total[i], expected, atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(mean[i], expected / len(target), atol=1e-5, rtol=1e-5)


def test_completion_nll_depends_on_the_completion_only_through_its_tokens(lm) -> None:
    model, tokenizer = lm
    with torch.no_grad():
        first = completion_nll(model, tokenizer, ["state\nAnalysis: "] * 2, ["go north", "go south"])
    assert not torch.isclose(first[0], first[1])


def test_completion_nll_truncates_the_prompt_from_the_left(lm) -> None:
    model, tokenizer = lm
    with torch.no_grad():
        cut = completion_nll(model, tokenizer, ["IGNORED PREFIX tail: "], ["ok"], max_length=9)
        tail = completion_nll(model, tokenizer, ["tail: "], ["ok"])
    torch.testing.assert_close(cut, tail)


# ---------------------------------------------------------------------------------------------- generation
def test_greedy_generation_is_deterministic_batch_independent_and_clean(lm) -> None:
    model, tokenizer = lm
    model.train()
    prompts = [reflection_prompt("Taxi at (1, 2)"), reflection_prompt("short"), reflection_prompt("é" * 9)]
    seen = []
    hook = model.register_forward_hook(
        lambda m, args, out: seen.append((torch.is_grad_enabled(), m.training))
    )
    try:
        first = generate_reflections(model, tokenizer, prompts, max_new_tokens=12)
    finally:
        hook.remove()
    assert seen and not any(grad or training for grad, training in seen)  # no_grad, eval mode
    assert model.training and all(m.training for m in model.modules())  # modes restored
    assert first == generate_reflections(model, tokenizer, prompts, max_new_tokens=12)
    assert first == [generate_reflections(model, tokenizer, [p], max_new_tokens=12)[0] for p in prompts]
    for text in first:
        assert "\n" not in text and "<|" not in text and text == text.strip()
        assert len(text) <= 12  # byte tokenizer: at most one character per generated token
    model.eval()


def test_greedy_generation_matches_recomputing_without_a_cache(lm) -> None:
    model, tokenizer = lm
    prompt = reflection_prompt("Taxi at (3, 4)")
    ids = list(prompt.encode())
    with torch.no_grad():
        for _ in range(10):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            logits[tokenizer.pad_token_id] = float("-inf")
            token = int(logits.argmax())
            if token == tokenizer.eos_token_id or token == ord("\n"):
                break
            ids.append(token)
    expected = bytes(ids[len(prompt.encode()) :]).decode("utf-8", errors="replace").strip()
    assert generate_reflections(model, tokenizer, [prompt], max_new_tokens=10) == [expected]


def test_sampling_is_seeded_by_its_generator_only(lm) -> None:
    model, tokenizer = lm
    prompts = [reflection_prompt("a"), reflection_prompt("bb")]
    state = torch.get_rng_state()
    runs = [
        generate_reflections(
            model,
            tokenizer,
            prompts,
            max_new_tokens=16,
            temperature=1.0,
            generator=torch.Generator().manual_seed(seed),
        )
        for seed in (5, 5, 6)
    ]
    assert runs[0] == runs[1] != runs[2]
    assert torch.equal(torch.get_rng_state(), state)


class ScriptedLM(nn.Module):
    """A stand-in causal LM that writes a fixed byte script, to test the stop rules."""

    def __init__(self, script: list[int], vocab: int = 258) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.script, self.vocab, self.calls = script, vocab, 0

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=False,
        logits_to_keep=0,
    ):
        token = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        logits[..., token] = 10.0
        return SimpleNamespace(logits=logits, past_key_values=None)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (list(b"  two words \nnext line"), "two words"),
        (list(b"stop at eos") + [257] + list(b"never"), "stop at eos"),
        (list(b"x" * 50), "x" * 8),
    ],
)
def test_generation_stops_at_newline_eos_or_length(script: list[int], expected: str) -> None:
    _, tokenizer = build_backbone(BackboneConfig(num_layers=1, hidden_size=32, num_heads=2))
    assert generate_reflections(
        ScriptedLM(script), tokenizer, ["p: "], max_new_tokens=8 if expected == "x" * 8 else 40
    ) == [expected]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_briefly_trained_model_generates_its_completion(arch: str) -> None:
    """30-odd steps on one example: proves the loss masking and the generation wiring agree."""
    model, tokenizer = build_backbone(
        BackboneConfig(architecture=arch, num_layers=2, hidden_size=64, num_heads=4)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    prompt, completion = reflection_prompt("Taxi at (1, 2)"), "go north"
    assert generate_reflections(model, tokenizer, [prompt], max_new_tokens=20) != [completion]
    for _ in range(40):
        loss = completion_nll(model, tokenizer, [prompt], [completion]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5
    assert generate_reflections(model, tokenizer, [prompt], max_new_tokens=20) == [completion]
