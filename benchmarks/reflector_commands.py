"""What the reflection player's reflections name on held-out records, measured in one run.

    python -m benchmarks.reflector_commands [--reflection runs/autoexplore/models/reflection]
        [--records data/autoexplore/policy_sft.test.jsonl] [--limit 300]

For the first ``--limit`` positive (non-negative) records of a policy SFT file, the
reflector writes its reflection greedily (``reflectrl.lm.generate_reflections``, 96 tokens, as the
AutoExplore configs); the last ``cd|cat|id <name>`` in it is the command it names. Printed per
first step / later steps: the share of reflections that name a command in the listing (valid)
and an optimal one (right), beside the share of states where the name-only agent of
``benchmarks.autoexplore_lexical`` picks an optimal action. The teacher's reflections always end
with an optimal command, so "right" is what the policy could copy.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter

from benchmarks.autoexplore_lexical import lexical_choice
from reflectrl.backbone import BackboneConfig, build_backbone
from reflectrl.lm import generate_reflections
from reflectrl.prompts import reflection_prompt

_COMMAND = re.compile(r"\b((?:cd|cat|id) \S+)")


def named_command(reflection: str) -> str | None:
    """The last ``cd|cat|id <name>`` a reflection writes, or None."""
    commands = _COMMAND.findall(reflection)
    return commands[-1] if commands else None


def question_of(observation: str) -> str:
    """The task line of an AutoExplore observation, without ``Task: ``."""
    return observation.split("\n", 1)[0].removeprefix("Task: ")


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reflection", default="runs/autoexplore/models/reflection")
    parser.add_argument("--records", default="data/autoexplore/policy_sft.test.jsonl")
    parser.add_argument("--limit", type=int, default=300, help="first positive records used")
    parser.add_argument("--max-tokens", type=int, default=96)
    options = parser.parse_args(args)
    with open(options.records, encoding="utf-8") as handle:
        records = [record for record in map(json.loads, handle) if not record["negative"]][: options.limit]
    model, tokenizer = build_backbone(BackboneConfig(name_or_path=options.reflection, trainable=False))
    reflections: list[str] = []
    for start in range(0, len(records), 16):
        prompts = [reflection_prompt(record["observation"]) for record in records[start : start + 16]]
        reflections += generate_reflections(model, tokenizer, prompts, max_new_tokens=options.max_tokens)
    counts: Counter[tuple[str, str]] = Counter()
    for record, reflection in zip(records, reflections, strict=True):
        step = "first" if record["step"] == 0 else "later"
        optimal = [record["valid_actions"][index] for index in record["optimal_actions"]]
        command = named_command(reflection)
        counts[(step, "states")] += 1
        counts[(step, "valid")] += command in record["valid_actions"]
        counts[(step, "right")] += command in optimal
        lexical = lexical_choice(question_of(record["observation"]), record["valid_actions"])
        counts[(step, "lexical")] += lexical in record["optimal_actions"]
    print(f"reflector {options.reflection} on {len(records)} positive records of {options.records}")
    print(f"{'steps':<6} {'states':>6} {'valid':>7} {'right':>7} {'lexical agent right':>20}")
    for step in ("first", "later"):
        n = counts[(step, "states")]
        if n:
            shares = [counts[(step, key)] / n for key in ("valid", "right", "lexical")]
            print(f"{step:<6} {n:>6} {shares[0]:>7.1%} {shares[1]:>7.1%} {shares[2]:>20.1%}")


if __name__ == "__main__":
    main()
