"""How often the reflection player's greedy reflection ends with a right move (DangerousTaxi).

    python -m benchmarks.reflector_accuracy                                   # the pipeline's reflector
    python -m benchmarks.reflector_accuracy --reflector DIR --data FILE --limit 500
    python -m benchmarks.reflector_accuracy --play test                       # the reflector alone plays

Generates a reflection for every positive (non-negative-example) state of a held-out policy SFT
file and counts the states where the last move word of the reflection ("north", ..., "pick up",
"drop off") names one of the optimal actions recorded for that state. This is the accuracy the
policy inherits when it follows the reflection, so it bounds how much of the RL stage's work the
reflector already does: a 5-step pickup succeeds with probability about accuracy^5.

``--play SPLIT`` measures that bound directly: the reflector alone plays every start state of the
split once per stage (pickup and full), each step taking the listed action its reflection names
last. The teacher's records cover only states on the oracle's paths, while a held-out start is a
state the reflector may never have been trained on; this is where a tiny reflector fails.
"""

from __future__ import annotations

import argparse
import time

import gymnasium

from reflectrl import prompts
from reflectrl.backbone import BackboneConfig, build_backbone
from reflectrl.data import POLICY_FIELDS, read_jsonl
from reflectrl.envs.taxi import DangerousTaxiEnv
from reflectrl.lm import generate_reflections
from reflectrl.rollout import Decision, play_episodes
from reflectrl.teachers.offline import taxi_move_word

MOVE_WORDS = ("north", "south", "east", "west", "pick up", "drop off")


def last_move_word(text: str) -> str | None:
    """The move word that occurs last in ``text`` (None when it names no move)."""
    lowered = text.lower()
    positions = {word: lowered.rfind(word) for word in MOVE_WORDS}
    word, position = max(positions.items(), key=lambda item: item[1])
    return word if position >= 0 else None


class _PinnedStart(gymnasium.Wrapper):
    """Resets its env to one fixed start state (``play_episodes`` passes the same options to all)."""

    def __init__(self, env: gymnasium.Env, start_state: int) -> None:
        super().__init__(env)
        self.start_state = start_state

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return self.env.reset(seed=seed, options={**(options or {}), "start_state": self.start_state})


def play_alone(model, tokenizer, split: str, stages: tuple[str, ...] = ("pickup", "full")) -> None:
    """The reflector plays every start of ``split`` once per stage; prints success and failures."""

    def decide(observations: list[str], valid_actions: list[list[str]]) -> list[Decision]:
        reflections = generate_reflections(
            model, tokenizer, [prompts.reflection_prompt(o) for o in observations], max_new_tokens=96
        )
        decisions = []
        for reflection, actions in zip(reflections, valid_actions, strict=True):
            word = last_move_word(reflection)
            named = [i for i, a in enumerate(actions) if taxi_move_word(a) == word]
            # Naming no listed move counts as a crash: the first action is taken and marked invalid.
            decisions.append(Decision(action=named[0] if named else 0, invalid=not named, extra=reflection))
        return decisions

    for stage in stages:
        starts = DangerousTaxiEnv.start_states(stage, split)
        envs = [_PinnedStart(DangerousTaxiEnv(stage=stage, split=split), start) for start in starts]
        episodes = play_episodes(envs, [0] * len(envs), {"stage": stage}, decide)
        wins = sum(e.success for e in episodes)
        print(f"reflector alone, {split}/{stage}: {wins}/{len(episodes)} starts = {wins / len(episodes):.1%}")
        for episode in episodes:
            if not episode.success:
                last = episode.transitions[-1]
                print(f"  {last.observation.splitlines()[-2]}: {last.decision.extra}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reflector", default="runs/taxi/models/reflection")
    parser.add_argument("--data", default="data/taxi/policy_sft.val.jsonl")
    parser.add_argument("--limit", type=int, default=1000, help="at most this many states")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--show-failures", type=int, default=0, help="print this many wrong reflections")
    parser.add_argument("--play", metavar="SPLIT", help="let the reflector alone play every start of SPLIT")
    args = parser.parse_args()

    model, tokenizer = build_backbone(BackboneConfig(name_or_path=args.reflector, trainable=False))
    if args.play:
        play_alone(model, tokenizer, args.play)
        return
    records = [r for r in read_jsonl(args.data, POLICY_FIELDS) if not r["negative"]][: args.limit]
    start = time.perf_counter()
    reflections: list[str] = []
    for i in range(0, len(records), args.batch_size):
        batch = records[i : i + args.batch_size]
        reflections += generate_reflections(
            model, tokenizer, [prompts.reflection_prompt(r["observation"]) for r in batch], max_new_tokens=96
        )
    seconds = time.perf_counter() - start
    right = 0
    failures = []
    for record, reflection in zip(records, reflections, strict=True):
        wanted = {taxi_move_word(record["valid_actions"][a]) for a in record["optimal_actions"]}
        if last_move_word(reflection) in wanted:
            right += 1
        else:
            failures.append((record["observation"].splitlines()[-2], sorted(wanted), reflection))
    print(
        f"{args.reflector}: right move in {right}/{len(records)} held-out states = {right / len(records):.1%} "
        f"({len(records) / seconds:.0f} reflections/s, {len(tokenizer)}-token vocabulary)"
    )
    for coordinates, wanted, reflection in failures[: args.show_failures]:
        print(f"  {coordinates} want {wanted}: {reflection}")


if __name__ == "__main__":
    main()
