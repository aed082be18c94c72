"""Prompted-LM baselines: a chat model behind an OpenAI-compatible API plays through the canonical
prompts, its replies are parsed into actions, and ``reflectrl test`` writes the usual results."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chat_server import ChatServer
from conftest import REPO, run_main

from reflectrl import prompts
from reflectrl.chat import ChatClient, ChatSettings
from reflectrl.chat_agent import ChatAgent, fallback_action

ACTIONS = ["go south", "go north", "go east", "go west", "pick up passenger", "drop off passenger"]
SECRET = "sk-test-DO-NOT-LEAK-77d1e0"
FAST = {"backoff_base": 0.01, "backoff_cap": 0.05, "timeout": 2.0, "progress": False}
RESULT_KEYS = {"env", "stage", "episodes", "success_rate", "mean_return", "crash_rate", "invalid_choice_rate"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("3", 2),
        ("3.", 2),
        (" **2** ", 1),
        ("Choice: 4", 3),
        ("Action #5", 4),
        ("(1) go south", 0),
        ("6. drop off passenger", 5),
        ("go east", 2),
        ("Go EAST!", 2),
        ("I will pick up passenger now.", 4),
        ("The best move: go west, since a wall blocks the north.", 3),
        ("9", None),  # a label out of range
        ("0", None),
        ("go north or go south", None),  # two actions: ambiguous
        ("I am not sure.", None),
        ("", None),
        ("7" * 5000, None),  # past Python's int-conversion limit: no label, never a ValueError
    ],
)
def test_parse_choice(reply: str, expected: int | None) -> None:
    assert prompts.parse_choice(reply, ACTIONS) == expected


def test_a_longer_action_text_wins_over_a_part_of_it() -> None:
    assert prompts.parse_choice("move north east", ["move north", "move north east"]) == 1


CASED = ["cd docs", "cat README.md", "cat readme.md", "id README.md", "id readme.md"]


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("cat readme.md", 2),  # case-folded, both match: the reply's own case decides
        ("cat README.md", 1),
        ("I will run `id readme.md` now.", 4),
        ("Cat readme.md", 2),  # no exact spelling: the closest one
        ("CAT README.MD", 1),
        ("cat README.md, not cat readme.md", None),  # both spelled exactly: ambiguous
        ("cat ReAdMe.md", None),  # as close to both: ambiguous
        ("CD DOCS", 0),  # no case twin: case-folding as before
    ],
)
def test_actions_differing_only_in_case_are_told_apart_by_the_reply(reply: str, expected: int | None) -> None:
    # AutoExplore lists names as they are: README.md and readme.md can share a folder.
    assert prompts.parse_choice(reply, CASED) == expected


def test_actions_that_look_the_same_take_the_first() -> None:
    # Listed the same in the prompt (sanitize_line collapses the spaces): nothing tells them apart.
    assert prompts.parse_choice("go north", ["go  north", "go north"]) == 0


def scripted_replier(body: dict[str, Any]) -> str:
    """Answers by the observation's first line: a label, an action text, or nonsense; and writes
    a reflection when asked for one."""
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    if system == prompts.REFLECTION_CHAT_INSTRUCTION:
        return "Analysis: the passenger is near,\nhead north."
    return {"state A": "2", "state B": "I would go west.", "state C": "Choice: 1", "state D": "No idea."}[
        user.splitlines()[0]
    ]


@pytest.mark.parametrize("reflect", [False, True])
def test_chat_agent_decides_through_the_canonical_prompts(reflect: bool, tmp_path: Path) -> None:
    observations = ["state A\nmore", "state B", "state C", "state D"]
    with ChatServer(replier=scripted_replier) as server:
        settings = ChatSettings(model="m", base_url=server.base_url, cache_dir=str(tmp_path / "c"), **FAST)
        reflector = ChatClient(settings, allow_cut_off=True) if reflect else None
        agent = ChatAgent(ChatClient(settings, allow_cut_off=True), reflector, seed=0)
        decisions = agent.decide(observations, [ACTIONS] * 4)
        log = list(server.log)
    assert [d.action for d in decisions[:3]] == [1, 3, 0]
    assert [d.invalid for d in decisions] == [False, False, False, True]
    assert decisions[3].action == fallback_action(0, "state D", "No idea.", len(ACTIONS))
    reflection = "the passenger is near, head north." if reflect else None
    policy_prompts = [r.body["messages"][1]["content"] for r in log if r.body["messages"][0]["content"]
                      == prompts.POLICY_CHAT_INSTRUCTION]
    # Byte-identical to what a trained policy reads.
    assert sorted(policy_prompts) == sorted(prompts.policy_prompt(o, reflection, ACTIONS) for o in observations)
    reflection_prompts = [r for r in log if r.body["messages"][0]["content"] == prompts.REFLECTION_CHAT_INSTRUCTION]
    assert len(reflection_prompts) == (4 if reflect else 0)
    assert all(d.extra["reflection"] == reflection for d in decisions)


def write_baseline_config(folder: Path, base_url: str, **changes: Any) -> Path:
    config = yaml.safe_load((REPO / "configs" / "taxi_prompted_baseline.yaml").read_text())
    config["trainer"].update({"default_root_dir": str(folder / "runs"), "enable_progress_bar": False,
                              "enable_model_summary": False})
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(folder / "runs")
    config["model"]["init_args"]["policy"].update({"base_url": base_url, "model": "test-chat",
                                                   "cache_dir": str(folder / "cache"), **FAST})
    config["data"]["init_args"]["evaluation"].update({"stages": ["pickup", "full"], "episodes": 3, "batch_size": 3})
    for key, value in changes.items():
        config["model"]["init_args"][key] = value
    path = folder / "baseline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def first_step_unsure(body: dict[str, Any]) -> str:
    """No idea at the first step of an episode; afterwards the first listed action, by number."""
    user = body["messages"][-1]["content"]
    if body["messages"][0]["content"] == prompts.REFLECTION_CHAT_INSTRUCTION:
        return "Go north."
    return "Hmm, hard to say." if "History: none" in user else "1"



@pytest.mark.parametrize("reflect", [False, True])
def test_reflectrl_test_writes_results_for_a_prompted_model(
    reflect: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with ChatServer(replier=first_step_unsure) as server:
        config = write_baseline_config(tmp_path, server.base_url, reflect=reflect)
        with caplog.at_level("INFO"):
            assert run_main(["test", "--config", str(config)]) == 0
        log = list(server.log)
        # Rerun: every reply comes from the cache, the server sees nothing.
        assert run_main(["test", "--config", str(config)]) == 0
        assert len(server.log) == len(log)
    results = sorted((tmp_path / "runs").rglob("results.json"))
    assert len(results) == 2 and results[0].read_text() == results[1].read_text()
    rows = json.loads(results[0].read_text())
    assert [row["stage"] for row in rows] == ["pickup", "full"]
    for row in rows:
        assert RESULT_KEYS <= set(row) and row["episodes"] == 3
        assert row["model"] == "PromptedAgentModule" and row["policy_model"] == "test-chat"
        assert row["reflect"] is reflect
        # Every first step is unparseable: at least one invalid choice per episode.
        assert 0 < row["invalid_choice_rate"] <= 1
    asked_to_reflect = [r for r in log if r.body["messages"][0]["content"] == prompts.REFLECTION_CHAT_INSTRUCTION]
    assert bool(asked_to_reflect) is reflect
    assert all(r.authorization == f"Bearer {SECRET}" for r in log)
    assert re.search(r"prompted policy test-chat: \d+ requests", caplog.text)
    written = "\n".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    assert SECRET not in written and SECRET not in caplog.text


def test_api_key_in_the_config_is_masked_in_the_saved_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ChatServer(replier=first_step_unsure) as server:
        config = write_baseline_config(tmp_path, server.base_url)
        assert run_main(["test", "--config", str(config), "--model.init_args.policy.api_key", SECRET]) == 0
        assert server.log and all(r.authorization == f"Bearer {SECRET}" for r in server.log)
    saved = list((tmp_path / "runs").rglob("config.yaml")) + list((tmp_path / "runs").rglob("hparams.yaml"))
    assert saved
    written = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "runs").rglob("*") if p.is_file())
    assert SECRET not in written


def test_fit_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_baseline_config(tmp_path, "http://127.0.0.1:9/v1")
    capsys.readouterr()
    assert run_main(["fit", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.rstrip("\n").splitlines()[-1] == "reflectrl: error: PromptedAgentModule has no trainable weights: use `reflectrl test`, not `fit`"


def test_a_server_that_keeps_failing_stops_the_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ChatServer(plan=lambda body, attempt: "500") as server:
        config = write_baseline_config(tmp_path, server.base_url)
        capsys.readouterr()
        assert run_main(["test", "--config", str(config), "--model.init_args.policy.max_attempts", "2"]) == 1
    err = capsys.readouterr().err
    line = err.rstrip("\n").splitlines()[-1]
    assert line.startswith("reflectrl: error: prompted policy (test-chat at http://127.0.0.1:") and "HTTP 500" in line
    assert not list(tmp_path.rglob("results.json"))
