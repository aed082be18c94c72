"""OfflineTeacher: short, deterministic, varied reflections that end with the move to make."""

from __future__ import annotations

import random
import re
import subprocess
import sys

import gymnasium
import pytest

import reflectrl.envs  # noqa: F401  (registers the envs)
from reflectrl.teachers import Mistake, OfflineTeacher, ReflectionRequest, Teacher
from reflectrl.teachers.offline import MAX_CHARS, taxi_move_word

TAXI = "reflectrl/DangerousTaxi-v0"
MOVE_WORDS = ("north", "south", "east", "west", "pick up", "drop off")
HINT_WORDS = ("oracle", "hint", "optimal", "privileged", "facts")


def last_move_word(text: str) -> str | None:
    """The last of north/south/east/west/pick up/drop off in ``text``."""
    found = [(m.start(), m.group(0)) for m in re.finditer("|".join(MOVE_WORDS), text.lower())]
    return max(found)[1] if found else None


def first_sentence(text: str) -> str:
    return text.split(". ")[0]


@pytest.fixture(scope="module")
def safe_env():
    env = gymnasium.make(TAXI, dangerous=False)
    yield env
    env.close()


@pytest.fixture(scope="module")
def positive_requests(safe_env) -> list[ReflectionRequest]:
    """Every state along oracle episodes of all stages."""
    requests = []
    unwrapped = safe_env.unwrapped
    for stage in ("pickup", "dropoff", "full"):
        for seed in range(25):
            observation, _ = safe_env.reset(seed=seed, options={"stage": stage})
            while True:
                requests.append(ReflectionRequest(observation, unwrapped.privileged_facts()))
                observation, _, terminated, truncated, _ = safe_env.step(unwrapped.oracle_actions()[0])
                if terminated or truncated:
                    break
    return requests


def mistake_request(env, kind: str, skip: int = 0) -> ReflectionRequest:
    """A negative-example request whose wrong action is of ``kind`` (wall/pickup/dropoff/detour)."""
    unwrapped = env.unwrapped
    found = 0
    for state in unwrapped.start_states("full"):
        observation, info = env.reset(seed=0, options={"stage": "full", "start_state": state})
        facts = unwrapped.privileged_facts()
        good = set(unwrapped.oracle_actions())
        actions = info["valid_actions"]
        for index, text in enumerate(actions):
            if index in good:
                continue
            word = taxi_move_word(text)
            is_kind = {
                "wall": word in facts["blocked"],
                "pickup": word == "pick up",
                "dropoff": word == "drop off",
                "detour": word in ("north", "south", "east", "west") and word not in facts["blocked"],
            }[kind]
            if not is_kind:
                continue
            if found < skip:
                found += 1
                break
            observation, _, _, _, step_info = env.step(index)
            if kind == "wall":
                assert step_info["event"] == "wall"
            return ReflectionRequest(observation, unwrapped.privileged_facts(), Mistake(text, facts))
    raise AssertionError(f"no {kind} mistake found")


def test_positive_reflections_short_one_line_no_hints(positive_requests):
    texts = OfflineTeacher().reflect(positive_requests)
    assert len(texts) == len(positive_requests)
    for text in texts:
        assert 0 < len(text) <= MAX_CHARS
        assert "\n" not in text and text == text.strip()
        assert text.isascii() and text.isprintable()
        assert not any(word in text.lower() for word in HINT_WORDS), text
        assert not re.search(r"[<>|\[\]{}]", text), text  # no special-token look-alikes
    mean = sum(map(len, texts)) / len(texts)
    assert 50 <= mean <= 130


def test_reflection_ends_with_current_move(positive_requests):
    for request, text in zip(positive_requests, OfflineTeacher().reflect(positive_requests), strict=True):
        move = taxi_move_word(request.facts["next_action"])
        assert move in text.lower()
        assert last_move_word(text) == move, (text, request.facts["next_action"])


def test_reflection_states_relative_position(safe_env):
    # Taxi (0,0); passenger at B (4,3): "four rows down" and "three columns right".
    unwrapped = safe_env.unwrapped
    for state in unwrapped.start_states("pickup"):
        observation, _ = safe_env.reset(seed=0, options={"stage": "pickup", "start_state": state})
        facts = unwrapped.privileged_facts()
        if facts["taxi"] == [0, 0] and facts["passenger"] == "B":
            text = OfflineTeacher().reflect([ReflectionRequest(observation, facts)])[0]
            assert "four rows down" in text and "three columns right" in text, text
            return
    raise AssertionError("state not found")


def test_wall_mentioned_when_it_blocks_the_way(positive_requests):
    texts = OfflineTeacher().reflect(positive_requests)
    mentioned = 0
    for request, text in zip(positive_requests, texts, strict=True):
        facts = request.facts
        dr = facts["target_pos"][0] - facts["taxi"][0]
        dc = facts["target_pos"][1] - facts["taxi"][1]
        toward = {"south" if dr > 0 else "north"} if dr else set()
        toward |= {"east" if dc > 0 else "west"} if dc else set()
        move = taxi_move_word(facts["next_action"])
        if toward and move in ("north", "south", "east", "west") and move not in toward:
            assert "wall" in text.lower(), text  # a detour is always explained
        if toward & set(facts["blocked"]):
            assert "wall" in text.lower() or len(text) > 100, text  # dropped only to stay short
            mentioned += "wall" in text.lower()
    assert mentioned > 10


def test_deterministic_and_independent_of_order_and_batching(positive_requests):
    teacher = OfflineTeacher(seed=3)
    batched = teacher.reflect(positive_requests)
    one_by_one = [teacher.reflect([request])[0] for request in positive_requests]
    shuffled = list(range(len(positive_requests)))
    random.Random(0).shuffle(shuffled)
    reordered = teacher.reflect([positive_requests[i] for i in shuffled])
    assert batched == one_by_one
    assert [batched[i] for i in shuffled] == reordered
    assert OfflineTeacher(seed=3).reflect(positive_requests) == batched
    other = OfflineTeacher(seed=4).reflect(positive_requests)
    assert sum(a != b for a, b in zip(batched, other, strict=True)) > len(batched) // 3


def test_stable_across_processes():
    # hashlib, not hash(): PYTHONHASHSEED must not change the wording.
    code = (
        "from reflectrl.teachers import OfflineTeacher, ReflectionRequest\n"
        "f = dict(env='reflectrl/DangerousTaxi-v0', stage='full', taxi=[0,0], passenger='B',"
        " passenger_pos=[4,3], destination='Y', destination_pos=[4,0], target='passenger',"
        " target_pos=[4,3], blocked=['north','west'], next_action='go south', good_actions=['go south'],"
        " steps_to_goal=7, last_event=None)\n"
        "print(OfflineTeacher().reflect([ReflectionRequest(f'obs {i}', f) for i in range(20)]))\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": str(h)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for h in (1, 2)
    }
    assert len(outputs) == 1


def test_varied_phrasings(positive_requests):
    texts = OfflineTeacher().reflect(positive_requests)
    assert len(set(texts)) > 0.5 * len(texts)
    # The same content gets several wordings: count distinct final sentences per move word.
    finals: dict[str, set[str]] = {}
    for text in texts:
        finals.setdefault(last_move_word(text) or "", set()).add(text.split(". ")[-1])
    for move in MOVE_WORDS:
        assert len(finals[move]) >= 3, (move, finals[move])


@pytest.mark.parametrize("kind", ["wall", "pickup", "dropoff", "detour"])
def test_mistake_reflections(safe_env, kind):
    teacher = OfflineTeacher()
    texts = []
    for skip in range(6):
        request = mistake_request(safe_env, kind, skip)
        text = teacher.reflect([request])[0]
        texts.append(text)
        assert len(text) <= MAX_CHARS and "\n" not in text
        assert not any(word in text.lower() for word in HINT_WORDS), text
        move = taxi_move_word(request.facts["next_action"])
        assert last_move_word(text) == move, text
        head = first_sentence(text).lower()
        wrong = taxi_move_word(request.mistake.action)
        if kind == "wall":
            assert "wall" in head and wrong in head, text
        elif kind == "pickup":
            assert "pickup" in head or "collect" in head, text
            assert "wall" not in head
        elif kind == "dropoff":
            assert "drop" in head or "let the passenger out" in head, text
            assert "wall" not in head
        else:
            assert wrong in head and "wall" not in head, text
            assert any(w in head for w in ("detour", "away", "off course", "wasted")), text
    assert len(set(texts)) > 1


def test_mistake_kinds_are_explained_distinctly(safe_env):
    teacher = OfflineTeacher()
    heads = {
        kind: first_sentence(teacher.reflect([mistake_request(safe_env, kind)])[0])
        for kind in ("wall", "pickup", "dropoff", "detour")
    }
    assert len(set(heads.values())) == 4, heads


def test_unknown_env_is_a_clear_error():
    with pytest.raises(ValueError, match="no reflection writer for env 'nope/Env-v0'"):
        OfflineTeacher().reflect([ReflectionRequest("obs", {"env": "nope/Env-v0"})])


def test_teacher_is_abstract():
    with pytest.raises(TypeError):
        Teacher()  # type: ignore[abstract]
    assert isinstance(OfflineTeacher(), Teacher)
