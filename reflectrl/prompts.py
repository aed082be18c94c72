"""The one canonical prompt builder.

Every text either player ever reads is made here: SFT datasets, RL rollouts, evaluation and the
prompted-LM baselines all call these functions, so the prompt a model was warmed up on is
byte-identical to the prompt it acts on (the original Reflect-RL code built them twice and they
drifted apart).

Layout (the observation comes first so its fixed-layout part, e.g. the Taxi grid, sits at fixed
token positions, which small models from scratch read much more easily):

    reflection input:  <observation>\n<REFLECTION_MARKER>
    policy input:      <observation>\n<REFLECTION_MARKER><reflection>\n<ACTIONS_HEADER>
                       1. <action>\n2. <action>\n...<ACTION_MARKER>

The policy's answer is the label of one action ("1", "2", ...).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

REFLECTION_MARKER = "Analysis: "
ACTIONS_HEADER = "Actions:\n"
ACTION_MARKER = "Choice: "
NO_REFLECTION = ""
TEMPLATE_PIECES = (REFLECTION_MARKER, ACTIONS_HEADER, ACTION_MARKER)
"""The fixed text every prompt holds (a trained tokenizer learns these as units)."""


def sanitize_line(text: str) -> str:
    """Collapse a free-text field (a reflection, an action name) onto one printable line.

    Newlines and control characters could otherwise forge prompt structure (a fake
    "Actions:" list); the reflection model is also stopped at the first newline.
    """
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(cleaned.split())


def choice_labels(num_actions: int) -> list[str]:
    """The labels the policy answers with: "1", "2", ..., str(num_actions)."""
    return [str(i + 1) for i in range(num_actions)]


def label_order(num_actions: int, shuffle: bool, rng: random.Random | None = None) -> list[int]:
    """Order in which actions are listed; ``order[k]`` is the action index shown as label k+1.

    Shuffled listing is an augmentation: the policy must read the list, not memorise positions.
    """
    order = list(range(num_actions))
    if shuffle:
        (rng or random).shuffle(order)
    return order


def reflection_prompt(observation: str) -> str:
    """Input of the reflection player: the state without the action list, then the marker."""
    return f"{observation.rstrip()}\n{REFLECTION_MARKER}"


def policy_prompt(
    observation: str,
    reflection: str | None,
    valid_actions: Sequence[str],
    order: Sequence[int] | None = None,
) -> str:
    """Input of the policy player.

    ``reflection=None`` gives the no-reflection baseline prompt (the analysis line is left out
    entirely). ``order`` lists action indices in display order (default: as given).
    """
    if order is None:
        order = range(len(valid_actions))
    labels = choice_labels(len(valid_actions))
    listing = "".join(
        f"{label}. {sanitize_line(valid_actions[index])}\n" for label, index in zip(labels, order, strict=True)
    )
    analysis = "" if reflection is None else f"{REFLECTION_MARKER}{sanitize_line(reflection)}\n"
    return f"{observation.rstrip()}\n{analysis}{ACTIONS_HEADER}{listing}{ACTION_MARKER}"
