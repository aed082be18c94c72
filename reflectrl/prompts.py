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

The policy's answer is the label of one action ("1", "2", ...). With ``labels="commands"`` the
list shows ``- <action>`` lines and the answer is the action's own text: a small model trained
from scratch learns to copy the command its reflection ends with far sooner than to look up that
command's number in a long list (AutoExplore and ALFWorld list up to ~50 actions).
"""

from __future__ import annotations

import random
import re
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


LABEL_STYLES = ("numbers", "commands")
"""How the policy answers: with an action's number (the paper) or with the action's text."""


def choice_labels(num_actions: int) -> list[str]:
    """The labels the policy answers with: "1", "2", ..., str(num_actions)."""
    return [str(i + 1) for i in range(num_actions)]


def check_label_style(style: str) -> str:
    if style not in LABEL_STYLES:
        raise ValueError(f"labels must be one of {LABEL_STYLES}, got {style!r}")
    return style


def answer_choices(
    valid_actions: Sequence[str], style: str = "numbers", space_in_answer: bool = False
) -> int | list[str]:
    """What ``reflectrl.lm.encode_choice_batch`` scores for one state, in action order.

    ``"numbers"``: the count n (answers "1".."n"); ``"commands"``: the actions' own (sanitized)
    texts, each after a space with ``space_in_answer`` (the prompt then ends without one).
    """
    check_answer_layout(style, True, space_in_answer)
    if style == "numbers":
        return len(valid_actions)
    lead = " " if space_in_answer else ""
    return [lead + sanitize_line(action) for action in valid_actions]


def check_answer_layout(style: str, list_actions: bool, space_in_answer: bool) -> None:
    """Leaving the list out or moving the space into the answer needs answers that are command texts.

    An unlisted action cannot be answered by its number; ``space_in_answer`` exists for subword
    tokenizers, which split "cd x" as "c", "d", " x" on its own but as " cd", " x" after a
    space, as everywhere else in the prompt (the history, the analysis).
    """
    if check_label_style(style) == "commands":
        return
    if not list_actions:
        raise ValueError(f"list_actions=False needs labels='commands' (the answer is the action's text), got {style!r}")
    if space_in_answer:
        raise ValueError(f"space_in_answer=True needs labels='commands', got {style!r}")


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
    labels: str = "numbers",
    list_actions: bool = True,
    space_in_answer: bool = False,
) -> str:
    """Input of the policy player.

    ``reflection=None`` gives the no-reflection baseline prompt (the analysis line is left out
    entirely). ``order`` lists action indices in display order (default: as given). ``labels``:
    ``"numbers"`` lists ``1. <action>`` lines, ``"commands"`` lists ``- <action>`` lines.
    ``list_actions=False`` (``"commands"`` only) leaves the list out: the answer is still scored
    over the valid actions alone, and the only command texts in the prompt are the history's and
    the analysis's, so copying the analysis's command is not confused with the list's look-alikes.
    ``space_in_answer=True`` ends the prompt at "Choice:"; the answers then start with the space
    (``answer_choices``), so the scored text is the same and only its tokenisation changes.
    """
    check_answer_layout(labels, list_actions, space_in_answer)
    analysis = "" if reflection is None else f"{REFLECTION_MARKER}{sanitize_line(reflection)}\n"
    marker = ACTION_MARKER.rstrip(" ") if space_in_answer else ACTION_MARKER
    if not list_actions:
        return f"{observation.rstrip()}\n{analysis}{marker}"
    if order is None:
        order = range(len(valid_actions))
    if check_label_style(labels) == "numbers":
        bullets = [f"{label}. " for label in choice_labels(len(valid_actions))]
    else:
        bullets = ["- "] * len(valid_actions)
    listing = "".join(
        f"{bullet}{sanitize_line(valid_actions[index])}\n" for bullet, index in zip(bullets, order, strict=True)
    )
    return f"{observation.rstrip()}\n{analysis}{ACTIONS_HEADER}{listing}{marker}"


# ---------------------------------------------------------------------------------------------
# Prompted chat models as players (the prompted-LM baselines)
# ---------------------------------------------------------------------------------------------
# A chat model gets the very same player prompt as a trained model, as the user message, after
# a system message that says what to answer. Its free-text reply is mapped back to an action by
# parse_choice.

REFLECTION_CHAT_INSTRUCTION = (
    "You act in a text environment. You are shown the current state. Write a short analysis of it: "
    "one or two sentences on one line, ending with the move to make. Reply with the analysis only."
)
POLICY_CHAT_INSTRUCTION = (
    "You act in a text environment. You are shown the current state, maybe an analysis of it, and a "
    "numbered list of the valid actions. Reply with the number of the action to take and nothing else."
)

# A label at the very start, after an optional "Choice:"/"Action"/"Answer"/"Option" and markdown.
_LEADING_LABEL = re.compile(
    r"^[\s*_`'\"(\[]*(?:(?:choice|action|answer|option)\b\s*(?:number|no\.?)?\s*[:#=-]?\s*)?[(\[#]?\s*(\d{1,9})(?!\d)",
    re.IGNORECASE,
)


def chat_messages(instruction: str, prompt: str) -> list[tuple[str, str]]:
    """(role, content) messages for a chat model: the instruction, then the canonical player prompt."""
    return [("system", instruction), ("user", prompt)]


def _normalise(text: str, fold_case: bool = True) -> str:
    text = sanitize_line(text)
    return " ".join((text.lower() if fold_case else text).strip(" \t*_`'\".!").split())


def _same_but_case(reply: str, indices: list[int], valid_actions: Sequence[str], whole: bool) -> int | None:
    """Which of ``indices`` (actions whose texts are equal once case-folded) the reply names.

    Case-folding lets "Go EAST!" name "go east", but two actions can differ in case alone:
    AutoExplore lists file names as they are, and a folder may hold both ``README.md`` and
    ``readme.md``. The reply's own case then decides: an action it spells exactly, else the one
    its spelling is closest to (most characters in the same case); a tie, or exact spellings of
    two of them, names none. Actions that also agree in case look the same in the prompt, so
    nothing in a reply can tell them apart: the first is taken, as for any single match.
    """
    cased = {i: _normalise(valid_actions[i], fold_case=False) for i in indices}
    if len(set(cased.values())) == 1:
        return min(indices)
    text = _normalise(reply, fold_case=False)
    exact: set[str] = set()
    closeness: dict[int, int] = {}
    for i in indices:
        pattern = re.compile(rf"(?<!\w){re.escape(cased[i])}(?!\w)", re.IGNORECASE)
        spans = [text] if whole else [m.group(0) for m in pattern.finditer(text)]
        exact.update(cased[i] for span in spans if span == cased[i])
        closeness[i] = max((sum(a == b for a, b in zip(span, cased[i], strict=False)) for span in spans), default=-1)
    if exact:
        return min(i for i in indices if cased[i] in exact) if len(exact) == 1 else None
    best = max(closeness.values())
    closest = [i for i in indices if closeness[i] == best]
    return closest[0] if len({cased[i] for i in closest}) == 1 else None


def parse_choice(reply: str, valid_actions: Sequence[str]) -> int | None:
    """The action index a free-text reply names, or None when it names none unambiguously.

    In order: a label at the start (``3``, ``3.``, ``**3**``, ``Choice: 3``, ``(3) go east``; out of
    range -> None); the reply being exactly one action's text; the reply mentioning exactly one
    action's text (a text inside a longer matching one does not count separately). Texts match
    case-folded; actions that differ in case alone are told apart by the reply's case.
    """
    label = _LEADING_LABEL.match(reply)
    if label:
        number = int(label.group(1))
        return number - 1 if 1 <= number <= len(valid_actions) else None
    text = _normalise(reply)
    names = [_normalise(action) for action in valid_actions]
    if text in names:
        return _same_but_case(reply, [i for i, name in enumerate(names) if name == text], valid_actions, whole=True)
    mentioned = {
        index for index, name in enumerate(names) if name and re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text)
    }
    # "go north" inside "go north east" is not a second answer.
    longest = {i for i in mentioned if not any(names[i] != names[j] and names[i] in names[j] for j in mentioned)}
    distinct = {names[i] for i in longest}
    if len(distinct) == 1:
        return _same_but_case(reply, sorted(longest), valid_actions, whole=False)
    return None
