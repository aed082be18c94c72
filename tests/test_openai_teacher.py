"""The OpenAI-compatible teacher and its robust requests, against a real local HTTP server.

The real ``openai`` client talks to ``tests/chat_server.py`` on 127.0.0.1, which injects the
failures of real servers (429 + Retry-After, 500, timeouts, malformed JSON, empty choices,
cut-off replies, dropped connections). No network, no real key; delays are kept tiny.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from chat_server import FAILURE_MODES, ChatServer, messages_key
from conftest import REPO, run_main

from reflectrl.chat import (
    ChatClient,
    ChatFailure,
    ChatReply,
    ChatRequest,
    ChatRequestError,
    ChatSettings,
    UnusableReply,
    backoff_delay,
    parse_completion,
    parse_retry_after,
    resolve_api_key,
)
from reflectrl.data import DataError
from reflectrl.errors import ReflectRLError
from reflectrl.generate import DataGenerator, ReflectionJournal, journal_path
from reflectrl.teachers import Mistake, OfflineTeacher, OpenAITeacher, ReflectionRequest, TeacherError
from reflectrl.teachers.openai_teacher import clean_reflection, reflection_messages

SECRET = "sk-test-DO-NOT-LEAK-8c1f2a"
FAST = {"backoff_base": 0.01, "backoff_cap": 0.05, "timeout": 0.5, "progress": False}
"""Client settings that keep retries quick (the slow mode sleeps past the 0.5 s timeout)."""
EPISODES = {"train": 2, "val": 1, "test": 1}


def reply_for(body: dict[str, Any]) -> str:
    """The server's one-line answer to a request (distinct per request)."""
    return f"Reply {messages_key(body)[:10]}: the passenger is close, go north."


def mixed_failures(body: dict[str, Any], attempt: int) -> str | None:
    """A third of the distinct requests fail their first try (a ninth also their second), in
    every failure mode, chosen by a hash of the request (deterministic)."""
    code = int(messages_key(body)[:12], 16)
    if code % 3 == 0 and attempt == 0:
        return FAILURE_MODES[(code // 3) % len(FAILURE_MODES)]
    if code % 9 == 0 and attempt == 1:
        return FAILURE_MODES[(code // 9 + 3) % len(FAILURE_MODES)]
    return None


@pytest.fixture
def server():
    with ChatServer(replier=reply_for, slow_seconds=1.0) as running:
        yield running


def settings(server: ChatServer, tmp_path: Path, **changes: Any) -> ChatSettings:
    values = {"model": "test-model", "base_url": server.base_url, "cache_dir": str(tmp_path / "cache"), **FAST}
    return ChatSettings(**{**values, **changes})


def one_request(text: str = "hello") -> ChatRequest:
    return ChatRequest.of([("user", text)], {"temperature": 0.0, "max_tokens": 50})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def record_ids(folder: Path, name: str) -> list[tuple]:
    rows = [json.loads(line) for line in (folder / name).read_text().splitlines()]
    return [(r["split"], r["stage"], r["seed"], r["step"], r["negative"]) for r in rows]


def all_text_under(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------- pure helpers
def test_retry_after_headers() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(0)
    for attempt in range(1, 8):
        delays = [backoff_delay(attempt, 1.0, 10.0, rng) for _ in range(50)]
        ceiling = min(10.0, 2.0 ** (attempt - 1))
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


@pytest.mark.parametrize(
    "body, reason",
    [
        ("{not json", "malformed JSON"),
        ('{"choices": []}', "no choices"),
        ('{"choices": [{"message": {"content": null}}]}', "no message content"),
        ('{"choices": [{"message": {"content": "  "}, "finish_reason": "stop"}]}', "empty"),
        ('{"choices": [{"message": {"content": "go no"}, "finish_reason": "length"}]}', "cut off"),
        ('{"choices": [{"message": {"content": "x"}, "finish_reason": "content_filter"}]}', "content filter"),
    ],
)
def test_unusable_bodies_are_rejected(body: str, reason: str) -> None:
    with pytest.raises(UnusableReply, match=reason):
        parse_completion(body)


def test_a_usable_body_with_usage_and_cost() -> None:
    body = {"choices": [{"message": {"content": "Go north."}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "cost": 0.002}}
    reply = parse_completion(json.dumps(body), allow_cut_off=True)
    assert (reply.text, reply.prompt_tokens, reply.completion_tokens, reply.cost) == ("Go north.", 12, 3, 0.002)


def test_hostile_numbers_in_a_reply_are_ignored_not_raised() -> None:
    # JSON allows 1e999 (inf), NaN and integers beyond a float: usage is bookkeeping, never a crash
    for value in ("1e999", "NaN", "-Infinity", "1" + "0" * 400):
        body = (
            '{"choices": [{"message": {"content": "Go north."}, "finish_reason": "stop"}], '
            f'"usage": {{"prompt_tokens": {value}, "completion_tokens": 3, "cost": {value}}}}}'
        )
        reply = parse_completion(body)
        assert (reply.prompt_tokens, reply.completion_tokens, reply.cost) == (0, 3, None), value
    for value in ("nan", "inf", "-inf"):
        assert parse_retry_after({"retry-after": value}) is None
        assert parse_retry_after({"retry-after-ms": value}) is None


def test_an_api_key_with_control_characters_is_refused_without_showing_it() -> None:
    assert resolve_api_key("sk-abc\n") == "sk-abc"  # a trailing newline of `$(cat key.txt)` is dropped
    with pytest.raises(ReflectRLError) as caught:
        resolve_api_key("sk-secret\nX-Injected: 1")
    assert "sk-secret" not in str(caught.value)


def test_server_specific_extra_params_go_in_the_body(server: ChatServer, tmp_path: Path) -> None:
    client = ChatClient(settings(server, tmp_path))
    (reply,) = client.complete([ChatRequest.of([("user", "hi")], {"temperature": 0.0, "top_k": 20, "seed": 3})])
    assert isinstance(reply, ChatReply)
    assert server.log[-1].body["top_k"] == 20 and server.log[-1].body["seed"] == 3


def test_the_cache_keeps_the_raw_reply_and_validates_it_like_a_fresh_one(server: ChatServer, tmp_path: Path) -> None:
    server.replier = lambda body: "  Go north.  "
    calls: list[str] = []

    def validate(text: str) -> str:  # not idempotent: a second pass would strip a second prefix
        calls.append(text)
        return "checked: " + text.strip()

    fresh = ChatClient(settings(server, tmp_path)).complete([one_request()], validate=validate)
    cached = ChatClient(settings(server, tmp_path)).complete([one_request()], validate=validate)
    assert fresh[0].text == cached[0].text == "checked: Go north."
    assert calls == ["  Go north.  ", "  Go north.  "] and len(server.log) == 1


def test_teacher_identity_records_changed_forbidden_words() -> None:
    default = repr(OpenAITeacher(model="m", base_url="http://127.0.0.1:9/v1"))
    assert "forbidden_words" not in default  # the default keeps existing journals valid
    changed = repr(OpenAITeacher(model="m", base_url="http://127.0.0.1:9/v1", forbidden_words=["north"]))
    assert changed != default and "forbidden_words=['north']" in changed


def test_cache_key_covers_the_request_and_the_endpoint() -> None:
    request = one_request()
    assert request.key("m") == one_request().key("m")
    # two servers may serve different models under one name
    assert request.key("m", "http://a:8000/v1") != request.key("m", "http://b:8000/v1")
    assert request.key("m") != request.key("other-model")
    assert request.key("m") != ChatRequest.of([("user", "hello")], {"temperature": 0.5, "max_tokens": 50}).key("m")
    assert request.key("m") != one_request("hello!").key("m")


# --------------------------------------------------------------------------------- the client
@pytest.mark.parametrize("mode", FAILURE_MODES)
def test_each_failure_is_retried(mode: str, server: ChatServer, tmp_path: Path) -> None:
    server.plan = lambda body, attempt: mode if attempt == 0 else None
    client = ChatClient(settings(server, tmp_path))
    (reply,) = client.complete([one_request()])
    assert isinstance(reply, ChatReply) and reply.text.startswith("Reply ")
    assert [r.mode for r in server.log] == [mode, None]
    assert (client.usage.retries, client.usage.failed) == (1, 0)


def test_retry_after_is_honoured(server: ChatServer, tmp_path: Path) -> None:
    server.plan = lambda body, attempt: "429" if attempt == 0 else None
    server.retry_after = "0.4"
    client = ChatClient(settings(server, tmp_path, backoff_cap=5.0))
    started = time.perf_counter()
    (reply,) = client.complete([one_request()])
    assert isinstance(reply, ChatReply)
    assert time.perf_counter() - started >= 0.4  # backoff alone would wait ~0.01 s


def test_unusable_reply_fails_after_max_attempts_and_is_never_cached(server: ChatServer, tmp_path: Path) -> None:
    server.plan = lambda body, attempt: "empty_content" if attempt < 3 else None
    client = ChatClient(settings(server, tmp_path, max_attempts=3))
    (result,) = client.complete([one_request()])
    assert isinstance(result, ChatFailure) and result.attempts == 3 and "empty" in result.reason
    assert len(server.log) == 3 and client.usage.failed == 1
    assert not list((tmp_path / "cache").rglob("*.json"))
    # The next run asks again (the 4th try succeeds) and caches the answer.
    (reply,) = ChatClient(settings(server, tmp_path, max_attempts=3)).complete([one_request()])
    assert isinstance(reply, ChatReply) and len(list((tmp_path / "cache").rglob("*.json"))) == 1


def test_a_bad_key_stops_the_batch_at_once(server: ChatServer, tmp_path: Path) -> None:
    server.plan = lambda body, attempt: "401"
    client = ChatClient(settings(server, tmp_path, concurrency=2, max_attempts=5))
    with pytest.raises(ChatRequestError, match="HTTP 401 .*OPENAI_API_KEY"):
        client.complete([one_request(str(i)) for i in range(20)])
    assert len(server.log) <= 4  # no retries, and the queued requests were cancelled


def test_the_cache_makes_a_rerun_free_and_dedupes(server: ChatServer, tmp_path: Path) -> None:
    requests = [one_request(str(i % 5)) for i in range(10)]  # 5 distinct
    first = ChatClient(settings(server, tmp_path)).complete(requests)
    assert len(server.log) == 5
    again = ChatClient(settings(server, tmp_path))
    second = again.complete(requests)
    assert len(server.log) == 5 and again.usage.cached == 5 and again.usage.tokens == 0
    assert [r.text for r in first] == [r.text for r in second]  # type: ignore[union-attr]
    cached = json.loads(next((tmp_path / "cache").rglob("*.json")).read_text())
    assert set(cached) == {"request", "reply"} and cached["request"]["model"] == "test-model"


def test_usage_counts_tokens_and_reported_cost(server: ChatServer, tmp_path: Path) -> None:
    client = ChatClient(settings(server, tmp_path, cache_dir=None))
    client.complete([one_request("one two three"), one_request("four")])
    usage = client.usage
    assert usage.requests == 2 and usage.prompt_tokens == 4 and usage.completion_tokens > 0
    assert usage.cost_reported and usage.cost == pytest.approx(usage.tokens * server.cost_per_token)
    assert "tokens=" in usage.postfix() and "cost=$" in usage.postfix()


# --------------------------------------------------------------------------------- the teacher
@pytest.fixture(scope="module")
def taxi_requests() -> list[ReflectionRequest]:
    import gymnasium

    import reflectrl.envs  # noqa: F401

    env = gymnasium.make("reflectrl/DangerousTaxi-v0", dangerous=False)
    observation, _ = env.reset(seed=3, options={"stage": "full"})
    facts = env.unwrapped.privileged_facts()
    positive = ReflectionRequest(observation, facts)
    observation, *_ = env.step(2)  # east: into a wall here
    mistake = Mistake(action="go east", facts_before=facts)
    negative = ReflectionRequest(observation, env.unwrapped.privileged_facts(), mistake)
    return [positive, negative]


def test_teacher_prompts(taxi_requests: list[ReflectionRequest]) -> None:
    positive, negative = taxi_requests
    (system, _), (_, user) = reflection_messages(positive, max_words=40)
    assert "never reveal" in reflection_messages(positive, 40)[0][1]
    assert positive.observation.rstrip() in user and '"go north"' in user  # the hint is given...
    assert "never mention" in user and "wrong" not in user
    _, (_, user) = reflection_messages(negative, max_words=40)
    assert negative.observation.rstrip() in user
    assert 'chose "go east"' in user and "why" in user and "plan" in user


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("The passenger is west.\nGo west.", "The passenger is west. Go west."),
        ('"Go north now."', "Go north now."),
        ("Analysis: go north.", "go north."),
        ("The hint says go north.", None),
        ("", None),
        ("x" * 301, None),
    ],
)
def test_reflections_are_cleaned_or_rejected(reply: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(UnusableReply):
            clean_reflection(reply, 300, ("hint", "oracle"))
    else:
        assert clean_reflection(reply, 300, ("hint", "oracle")) == expected


def test_teacher_reflects_and_reports_partial_failures(
    server: ChatServer, tmp_path: Path, taxi_requests: list[ReflectionRequest]
) -> None:
    teacher = OpenAITeacher(model="m", base_url=server.base_url, cache_dir=str(tmp_path / "c"), max_attempts=2, **FAST)
    texts = teacher.reflect(taxi_requests)
    assert all(t.startswith("Reply ") for t in texts)
    bad = messages_key(server.log[1].body)
    server.plan = lambda body, attempt: "500" if messages_key(body) == bad else None
    fresh = OpenAITeacher(model="m", base_url=server.base_url, cache_dir=None, max_attempts=2, **FAST)
    with pytest.raises(TeacherError, match="1 of 2 reflections failed .*HTTP 500") as caught:
        fresh.reflect(taxi_requests)
    assert sum(text is None for text in caught.value.partial) == 1
    assert SECRET not in repr(OpenAITeacher(model="m", api_key=SECRET))  # type: ignore[arg-type]


def test_free_text_completions_for_task_writing(server: ChatServer, tmp_path: Path) -> None:
    """Environments that need written tasks (AutoExplore's questions) use the same robust path."""
    server.plan = lambda body, attempt: "drop" if attempt == 0 else None
    teacher = OpenAITeacher(model="m", base_url=server.base_url, cache_dir=None, **FAST)
    texts = teacher.complete_texts(["Write a question answered by src/io.py", "And by setup.py"], system="Be brief.")
    assert len(texts) == 2 and all(t.startswith("Reply ") and "\n" not in t for t in texts)
    assert server.log[0].body["messages"][0] == {"role": "system", "content": "Be brief."}


# ------------------------------------------------------------------------------ data generation
def generator(output: Path, teacher: Any = None, **changes: Any) -> DataGenerator:
    args: dict[str, Any] = {"episodes": EPISODES, "negatives_per_episode": 1, "output_dir": str(output), "seed": 0}
    if teacher is not None:
        args["teacher"] = teacher
    return DataGenerator(**{**args, **changes})


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run with the offline teacher: which records a run must produce."""
    output = tmp_path_factory.mktemp("reference") / "data"
    generator(output).run()
    return output


def test_generation_survives_a_third_of_requests_failing(
    server: ChatServer, tmp_path: Path, reference: Path
) -> None:
    server.plan = mixed_failures
    teacher = OpenAITeacher(model="m", base_url=server.base_url, cache_dir=str(tmp_path / "cache"),
                            concurrency=8, max_attempts=4, **FAST)
    output = tmp_path / "data"
    generator(output, teacher, teacher_batch_size=32).run()

    modes = Counter(r.mode for r in server.log)
    assert set(FAILURE_MODES) <= set(modes)  # every kind of failure happened
    assert 0.25 <= sum(n for m, n in modes.items() if m) / len(server.log) <= 0.45
    # Every record exactly once (the offline run's records, same order), each with its reply.
    for name in sorted(p.name for p in reference.glob("*.jsonl")):
        assert record_ids(output, name) == record_ids(reference, name), name
    answered = {reply_for(r.body) for r in server.log if r.mode is None}
    for line in (output / "reflection_sft.train.jsonl").read_text().splitlines():
        assert json.loads(line)["reflection"] in answered
    assert not journal_path(output).exists()
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["args"]["teacher"]["class_path"] == "reflectrl.teachers.openai_teacher.OpenAITeacher"


def test_an_interrupted_run_continues_from_the_journal(tmp_path: Path, reference: Path) -> None:
    """Ctrl-C in the 3rd teacher call: the first two batches are kept, the rerun asks only for
    the rest, and the data files are byte-identical to an uninterrupted run's."""

    class InterruptedTeacher(OfflineTeacher):
        def __init__(self, interrupt_at_call: int) -> None:
            super().__init__(seed=0)
            self.calls, self.asked, self.interrupt_at_call = 0, 0, interrupt_at_call

        def reflect(self, requests: Sequence[ReflectionRequest]) -> list[str]:
            self.calls += 1
            if self.calls == self.interrupt_at_call:
                raise KeyboardInterrupt
            self.asked += len(requests)
            return super().reflect(requests)

    output = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        generator(output, InterruptedTeacher(3), teacher_batch_size=16).run()
    assert not output.exists()
    assert len(journal_path(output).read_text().splitlines()) == 32
    resumed = InterruptedTeacher(0)
    summary = generator(output, resumed, teacher_batch_size=16).run()
    assert 0 < resumed.asked <= summary["decisions"] - 32
    for path in sorted(reference.glob("*.jsonl")):  # (the manifest names the teacher class)
        assert (output / path.name).read_bytes() == path.read_bytes(), path.name
    assert not journal_path(output).exists()


def test_journal_drops_a_torn_line(tmp_path: Path) -> None:
    journal = ReflectionJournal(tmp_path / "j.jsonl")
    journal.append([("a", "Go north."), ("b", "Go south.")])
    with open(journal.path, "a") as file:
        file.write('{"key": "c", "refl')  # kill -9 mid-write
    assert journal.load() == {"a": "Go north.", "b": "Go south."}
    journal.append([("c", "Go east.")])
    assert journal.load() == {"a": "Go north.", "b": "Go south.", "c": "Go east."}


def write_data_config(path: Path, output: Path, base_url: str, cache: Path, **teacher: Any) -> Path:
    config = yaml.safe_load((REPO / "configs" / "taxi_data_openai.yaml").read_text())
    config["episodes"] = EPISODES
    config["output_dir"] = str(output)
    config["teacher_batch_size"] = 8
    config["teacher"]["init_args"].update(
        {"base_url": base_url, "model": "m", "cache_dir": str(cache), **FAST, **teacher}
    )
    path.write_text(yaml.safe_dump(config))
    return path



def cached_message_keys(cache: Path) -> set[str]:
    return {messages_key(json.loads(p.read_text())["request"]) for p in cache.rglob("*.json")}


def test_killed_run_resumes_without_paying_twice(
    server: ChatServer, tmp_path: Path, reference: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    server.plan = mixed_failures
    server.gate, server.gate_after = threading.Event(), 40  # freeze the run after 40 requests
    output, cache = tmp_path / "data", tmp_path / "cache"
    config = write_data_config(tmp_path / "data.yaml", output, server.base_url, cache, concurrency=4)
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "reflectrl.generate", "--config", str(config)],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(server.log) <= server.gate_after and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # let the other requests in flight reach the gate too
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    server.gate.set()
    assert process.returncode == -signal.SIGKILL
    assert not output.exists() and journal_path(output).exists()
    paid = cached_message_keys(cache)
    assert paid and len(server.log) >= server.gate_after
    first_run = len(server.log)

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with caplog.at_level("INFO"):
        assert run_main(["generate", "--config", str(config)]) == 0
    assert "resuming" in caplog.text
    resent = [r.key for r in server.log[first_run:]]
    assert resent and not paid & set(resent)  # nothing answered before is asked again
    for name in sorted(p.name for p in reference.glob("*.jsonl")):
        assert record_ids(output, name) == record_ids(reference, name), name
    assert not journal_path(output).exists()
    # The key reached the server, and nothing written holds it.
    assert all(r.authorization == f"Bearer {SECRET}" for r in server.log)
    assert SECRET not in all_text_under(tmp_path) and SECRET not in caplog.text


def test_api_key_from_the_command_line_is_never_written(
    server: ChatServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    output = tmp_path / "data"
    config = write_data_config(tmp_path / "data.yaml", output, server.base_url, tmp_path / "cache")
    args = ["generate", "--config", str(config), "--teacher.init_args.api_key", SECRET]
    with caplog.at_level("DEBUG"):
        assert run_main([*args, "--print_config"]) == 0
        assert run_main(args) == 0
    assert server.log and all(r.authorization == f"Bearer {SECRET}" for r in server.log)
    captured = capsys.readouterr()
    assert "**********" in captured.out  # --print_config masks it
    for text in (captured.out, captured.err, caplog.text, all_text_under(tmp_path)):
        assert SECRET not in text


def test_unreachable_server_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    output = tmp_path / "data"
    config = write_data_config(tmp_path / "data.yaml", output, url, tmp_path / "cache", max_attempts=2)
    capsys.readouterr()
    assert run_main(["generate", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("reflectrl: error:")]
    assert len(lines) == 1 and err.rstrip("\n").splitlines()[-1] == lines[0], err
    assert "cannot connect" in lines[0] and url in lines[0] and "run the same command again" in lines[0]
    assert "Traceback" not in err and not output.exists()


def test_a_failed_request_is_never_written_as_data(server: ChatServer, tmp_path: Path) -> None:
    """A request that keeps failing stops the run: no data files, the rest is journaled."""
    seen: list[str] = []

    def plan(body: dict[str, Any], attempt: int) -> str | None:
        if not seen:
            seen.append(messages_key(body))
        return "malformed" if messages_key(body) == seen[0] else None

    server.plan = plan
    teacher = OpenAITeacher(model="m", base_url=server.base_url, cache_dir=None, max_attempts=2,
                            concurrency=1, **FAST)
    output = tmp_path / "data"
    with pytest.raises(DataError, match="1 of 8 reflections failed .*malformed JSON.*first failed record: split \\w+, stage \\w+, seed \\d+, step 0\\).*7 of \\d+ reflections are saved"):
        generator(output, teacher, teacher_batch_size=8).run()
    assert not output.exists()
    assert len(ReflectionJournal(journal_path(output)).load()) == 7

