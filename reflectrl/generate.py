"""``reflectrl generate``: teacher datasets for the SFT warm-up (oracle trajectories + negatives).

For every split and curriculum stage, episodes are played by the env's privileged oracle; every
decision becomes one record (observation, valid actions, the oracle's action, all optimal
actions) and the teacher writes its reflection. **Negative examples** branch off an oracle
episode: in a copy of the episode in a non-dangerous env the oracle prefix is replayed, one wrong
(non-optimal) action is taken, and the state reached after it is recorded with the teacher's
explanation of the mistake and the oracle's action from there as the policy label.

Generic over envs that follow the env API of ARCHITECTURE.md: nothing here knows Taxi.
Fully deterministic: the same configuration writes byte-identical files.

**Resuming.** Episodes are cheap and deterministic; the teacher's reflections may be slow and
paid for (an LLM behind an API). Every batch of reflections is appended to a journal, a hidden
JSONL file next to ``output_dir`` (``.{name}.journal.jsonl``), one line per finished request,
keyed by a hash of the request and the teacher, flushed and fsync'd before the next batch. An
interrupted run (Ctrl-C, kill -9, a server that stays down) leaves the journal behind; the same
command replays the episodes, takes every reflection the journal has, and asks the teacher only
for the rest. A line torn by a kill is dropped. The data files are written at the end, atomically,
from the episodes and the journal, so no record is lost or duplicated; then the journal is deleted.

    reflectrl generate --config configs/taxi_data.yaml [--seed 1] [--overwrite true] [--print_config]
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import os
import random
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium

import reflectrl.envs  # noqa: F401  (registers the envs with gymnasium)
from reflectrl.data import (
    PLAIN_FIELDS,
    POLICY_FIELDS,
    REFLECTION_FIELDS,
    DataError,
    validate_record,
    write_jsonl,
)
from reflectrl.datamodules.episodes import make_env
from reflectrl.errors import ReflectRLError, UsageError, config_file_problem, summarize_parse_error
from reflectrl.prompts import sanitize_line
from reflectrl.rollout import env_name
from reflectrl.teachers import Mistake, OfflineTeacher, ReflectionRequest, Teacher, TeacherError

logger = logging.getLogger("reflectrl.generate")

KINDS: tuple[str, ...] = (
    "reflection_sft",
    "policy_sft",
    "plain_sft",
    "reflection_sft_positive",
    "policy_sft_positive",
)
"""Record files written per split (``{kind}.{split}.jsonl``)."""

_KIND_SCHEMAS = {
    "reflection_sft": REFLECTION_FIELDS,
    "policy_sft": POLICY_FIELDS,
    "plain_sft": PLAIN_FIELDS,
    "reflection_sft_positive": REFLECTION_FIELDS,
    "policy_sft_positive": POLICY_FIELDS,
}

MANIFEST = "manifest.json"


def journal_path(output_dir: str | Path) -> Path:
    """The resume journal of ``output_dir``: a hidden sibling file (the folder itself is swapped in whole)."""
    output = Path(output_dir)
    return output.parent / f".{output.name}.journal.jsonl"


class ReflectionJournal:
    """Append-only JSONL of finished reflections, ``{"key": ..., "reflection": ...}`` per line.

    Appends are flushed and fsync'd, so after a kill -9 at most the line being written is torn;
    :meth:`load` drops such a line (and cuts it off the file, so the next append starts clean).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, str]:
        """Reflections by request key (empty when there is no journal)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        complete = data[: data.rfind(b"\n") + 1]  # a last line without newline is torn
        if len(complete) < len(data):
            logger.warning("generate: dropping a torn last line of %s", self.path)
            with open(self.path, "r+b") as file:
                file.truncate(len(complete))
        entries: dict[str, str] = {}
        for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
            try:
                entry = json.loads(line)
                entries[str(entry["key"])] = str(entry["reflection"])
            except (ValueError, KeyError, TypeError, RecursionError):
                raise DataError(
                    f"{self.path}:{number}: unreadable journal line (delete the file to start over)"
                ) from None
        return entries

    def append(self, entries: Sequence[tuple[str, str]]) -> None:
        if not entries:
            return
        lines = "".join(
            json.dumps({"key": key, "reflection": text}, ensure_ascii=False) + "\n" for key, text in entries
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(lines)
            file.flush()
            os.fsync(file.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def teacher_identity(teacher: Teacher) -> str:
    """Class path plus repr when the class defines one (object's repr has a memory address)."""
    teacher_type = type(teacher)
    identity = f"{teacher_type.__module__}.{teacher_type.__qualname__}"
    if teacher_type.__repr__ is not object.__repr__:
        identity += f" {teacher!r}"
    return identity


def request_key(teacher_id: str, request: ReflectionRequest) -> str:
    """Hash of everything a reflection depends on: the teacher and the whole request."""
    mistake = None
    if request.mistake is not None:
        mistake = {"action": request.mistake.action, "facts_before": request.mistake.facts_before}
    content = {"teacher": teacher_id, "observation": request.observation, "facts": request.facts, "mistake": mistake}
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` via SHA-256: identical in every process (unlike ``hash()``)."""
    # surrogatepass: file names that are not valid UTF-8 arrive surrogate-escaped; valid text
    # encodes exactly as with the strict default, so existing seeds are unchanged.
    text = "\x00".join(str(part) for part in parts)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass
class Prepared:
    """What an :class:`EnvPreparation` built for one generation run."""

    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Merged over ``env_kwargs`` while generating (e.g. the tasks, in memory)."""
    files: dict[str, str] = field(default_factory=dict)
    """Extra text files written into ``output_dir`` (name -> content), e.g. ``tasks.jsonl``."""
    manifest: dict[str, Any] = field(default_factory=dict)
    """Recorded under ``"prepared"`` in ``manifest.json``."""


class EnvPreparation(ABC):
    """Builds what an env needs before its oracle episodes are played (AutoExplore: its tasks).

    Must be deterministic given ``seed``: the generator's output is byte-identical across runs.
    """

    @abstractmethod
    def prepare(self, seed: int) -> Prepared:
        """Build the env's inputs; ``seed`` is the generator's seed."""

    def augment(self, files: dict[str, list[dict]], seed: int) -> dict[str, list[dict]]:
        """Records to write, from the generated ones by file name (default: unchanged).

        An env-specific data augmentation (AutoExplore: renamed copies of the training policy
        records); deterministic given ``seed``.
        """
        return files


@dataclass
class _Decision:
    """One recorded decision (positive or negative), before the teacher's reflection."""

    split: str
    stage: str
    seed: int
    step: int
    observation: str
    valid_actions: list[str]
    action: int
    optimal_actions: list[int]
    facts: dict[str, Any]
    mistake: Mistake | None = None

    @property
    def negative(self) -> bool:
        return self.mistake is not None


class DataGenerator:
    """Generates the reflection / policy SFT datasets of one env from its oracle and a teacher."""

    def __init__(
        self,
        env_id: str = "reflectrl/DangerousTaxi-v0",
        env_kwargs: dict[str, Any] | None = None,
        stages: list[str] = ["pickup", "dropoff", "full"],  # noqa: B006  (copied, never mutated)
        episodes: dict[str, int] = {"train": 40, "val": 20, "test": 20},  # noqa: B006
        negatives_per_episode: int = 1,
        teacher: Teacher = OfflineTeacher(),  # noqa: B008  (stateless; shown by --print_config)
        output_dir: str = "data/taxi",
        seed: int = 0,
        overwrite: bool = False,
        teacher_batch_size: int = 64,
        prepare: EnvPreparation | None = None,
        wander_fraction: float = 0.0,
        wander_steps: int = 0,
    ) -> None:
        """Configure a generation run (nothing is done until :meth:`run`).

        Args:
            env_id: Registered gymnasium id of the env (it must follow the reflectrl env API:
                text observations, ``info["valid_actions"]``, ``oracle_actions()``,
                ``privileged_facts()``).
            env_kwargs: Constructor kwargs of the env (negative examples are played with
                ``dangerous=False`` added, so that a wrong action does not end the episode).
            stages: Curriculum stages (``reset`` option ``stage``) to generate episodes for.
            episodes: Number of oracle episodes per split and per stage, keyed by split
                (``reset`` option ``split``): ``{"train": 40, "val": 20, "test": 20}``. A split
                with 0 episodes gets no files.
            negatives_per_episode: Negative examples branched off each episode (at distinct,
                randomly chosen decision points; fewer when the episode has fewer).
            teacher: Writes the reflections (default: the offline teacher).
            output_dir: Folder the JSONL files and ``manifest.json`` are written to.
            seed: Seed of everything random (episode seeds, negative points, wrong actions).
            overwrite: Replace an existing non-empty ``output_dir`` (otherwise refuse).
            teacher_batch_size: Reflection requests per ``teacher.reflect`` call.
            prepare: Optional step run first that builds the env's inputs (e.g.
                ``reflectrl.autoexplore_tasks.AutoExploreBenchmark`` mines the AutoExplore tasks
                and writes ``tasks.jsonl`` beside the data).
            wander_fraction: Share of episodes that start with a short random walk before the
                oracle takes over (the walk's own steps are not recorded). It varies the history
                each state is seen with, so the players learn that the best move depends on the
                state, not on how it was reached: held-out starts show histories (above all
                "none") that the train split never pairs with their positions.
            wander_steps: Longest random walk (1 to this many safe actions: ones that neither
                end the episode nor crash, tried on a copy of the env first).
        """
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.stages = list(stages)
        self.episodes = {str(split): int(count) for split, count in episodes.items()}
        self.negatives_per_episode = int(negatives_per_episode)
        self.teacher = teacher
        self.output_dir = output_dir
        self.seed = int(seed)
        self.overwrite = bool(overwrite)
        self.teacher_batch_size = int(teacher_batch_size)
        self.prepare = prepare
        self.wander_fraction = float(wander_fraction)
        self.wander_steps = int(wander_steps)
        if not 0.0 <= self.wander_fraction <= 1.0 or self.wander_steps < 0:
            raise ReflectRLError(
                f"generate: wander_fraction must be in [0, 1] and wander_steps >= 0, got {wander_fraction}, {wander_steps}"
            )
        if not self.stages:
            raise ReflectRLError("generate: stages must list at least one stage")
        if len(set(self.stages)) != len(self.stages):
            raise ReflectRLError(f"generate: stages has duplicates: {self.stages}")
        if any(count < 0 for count in self.episodes.values()) or not any(self.episodes.values()):
            raise ReflectRLError(
                f"generate: episodes must be >= 0 per split and not all 0, got {self.episodes}"
            )
        if self.negatives_per_episode < 0:
            raise ReflectRLError(f"generate: negatives_per_episode must be >= 0, got {negatives_per_episode}")
        if self.teacher_batch_size < 1:
            raise ReflectRLError(f"generate: teacher_batch_size must be >= 1, got {teacher_batch_size}")
        if not isinstance(teacher, Teacher):
            raise ReflectRLError(f"generate: teacher must be a Teacher, got {type(teacher).__name__}")

    # ------------------------------------------------------------------------------- public
    def run(self) -> dict[str, Any]:
        """Generate all files into ``output_dir``; returns a summary (counts, seconds, paths)."""
        started = time.perf_counter()
        output = Path(self.output_dir)
        self._check_output(output)
        prepared = self.prepare.prepare(self.seed) if self.prepare is not None else Prepared()
        env_kwargs = self.env_kwargs | prepared.env_kwargs
        env = make_env(self.env_id, env_kwargs, "env_kwargs")
        # Negative examples continue after the wrong action, so they need crashes that only
        # penalise.
        safe_env = make_env(self.env_id, env_kwargs | {"dangerous": False}, "env_kwargs")
        try:
            decisions, stats = self._collect(env, safe_env)
        finally:
            env.close()
            safe_env.close()
        journal = ReflectionJournal(journal_path(output))
        reflections = self._reflect(decisions, journal)
        files = self._records_by_file(decisions, reflections)
        if self.prepare is not None:
            files = self.prepare.augment(files, self.seed)
        self._validate(files)
        manifest = self._manifest(files, stats)
        if self.prepare is not None:
            manifest["args"]["prepare"] = _describe(self.prepare)
            manifest["prepared"] = prepared.manifest
        self._write_output(output, files, manifest, prepared.files)
        journal.remove()  # only now: the data it fed is in place
        seconds = time.perf_counter() - started
        summary = {
            "output_dir": str(output),
            "files": manifest["files"],
            "decisions": len(decisions),
            "negatives": stats["negatives"],
            "seconds": round(seconds, 3),
        }
        logger.info(
            "generate: wrote %d decisions (%d negatives) to %s in %.1f s",
            len(decisions),
            stats["negatives"],
            output,
            seconds,
        )
        return summary

    # ---------------------------------------------------------------------------- episodes
    def _reset(self, env: gymnasium.Env, seed: int, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        try:
            return env.reset(seed=seed, options=dict(options))
        except (ValueError, KeyError) as error:
            raise ReflectRLError(
                f"generate: env {self.env_id!r} rejected reset options {options}: {error}"
            ) from None

    def episode_seeds(self, split: str, stage: str) -> list[int]:
        """The distinct episode seeds of (split, stage), derived from ``seed`` only."""
        rng = random.Random(stable_seed(self.seed, "episodes", split, stage))
        return rng.sample(range(2**31 - 1), self.episodes.get(split, 0))

    def _collect(self, env: gymnasium.Env, safe_env: gymnasium.Env) -> tuple[list[_Decision], dict[str, Any]]:
        """Play all oracle episodes and branch the negatives; check the split disjointness."""
        # Fail fast on a bad stage/split name, before any episode is played.
        for split, count in self.episodes.items():
            for stage in self.stages if count else []:
                self._reset(env, 0, {"stage": stage, "split": split})
        decisions: list[_Decision] = []
        starts: dict[str, set[str]] = {}
        stats: dict[str, Any] = {"episodes": {}, "negatives": 0, "negatives_skipped": 0, "oracle_failures": 0}
        for split, count in self.episodes.items():
            if count == 0:
                continue
            stats["episodes"][split] = {}
            for stage in self.stages:
                options = {"stage": stage, "split": split}
                for seed in self.episode_seeds(split, stage):
                    positives, start, success, walk = self._oracle_episode(env, seed, options)
                    starts.setdefault(split, set()).add(start)
                    stats["oracle_failures"] += not success
                    negatives, skipped = self._negatives(safe_env, seed, options, positives, walk)
                    stats["negatives"] += len(negatives)
                    stats["negatives_skipped"] += skipped
                    # Each negative follows the positive decision it branched from.
                    by_step = {n.step - 1: n for n in negatives}
                    for decision in positives:
                        decisions.append(decision)
                        if decision.step in by_step:
                            decisions.append(by_step[decision.step])
                stats["episodes"][split][stage] = count
                logger.info(
                    "generate: %s/%s: %d episodes, %d decisions so far", split, stage, count, len(decisions)
                )
        self._check_disjoint(starts)
        stats["start_states"] = {split: len(keys) for split, keys in starts.items()}
        if stats["oracle_failures"]:
            logger.warning("generate: %d oracle episodes did not succeed", stats["oracle_failures"])
        return decisions, stats

    def _oracle_episode(
        self, env: gymnasium.Env, seed: int, options: dict[str, Any]
    ) -> tuple[list[_Decision], str, bool, list[int]]:
        """Optionally wander, then follow the oracle (lowest optimal index) to the end.

        Returns the decisions, the start state's key, success, and the walk's actions.
        """
        split, stage = options["split"], options["stage"]
        observation, info = self._reset(env, seed, options)
        if "split" in info and info["split"] != split:
            raise DataError(
                f"env {self.env_id} put seed {seed} in split {info['split']!r}, asked for {split!r}"
            )
        # The start state identifies the task; fall back to the first observation if the env
        # does not report one.
        start = json.dumps(info.get("start_state", observation), sort_keys=True, default=str)
        walk, observation, info = self._wander(env, seed, options, observation, info)
        decisions: list[_Decision] = []
        for step in _count_steps(self.env_id, seed, first=len(walk)):
            optimal = sorted(int(a) for a in env.unwrapped.oracle_actions())
            if not optimal:
                raise DataError(
                    f"env {self.env_id}: the oracle has no action at step {step} (seed {seed}, {options})"
                )
            decision = _Decision(
                split=split,
                stage=stage,
                seed=seed,
                step=step,
                observation=observation,
                valid_actions=[str(a) for a in info["valid_actions"]],
                action=optimal[0],
                optimal_actions=optimal,
                facts=env.unwrapped.privileged_facts(),
            )
            decisions.append(decision)
            observation, _, terminated, truncated, info = env.step(decision.action)
            if terminated or truncated:
                return decisions, start, bool(info.get("success", False)), walk
        raise AssertionError("unreachable")  # _count_steps raises first

    def _wander(
        self, env: gymnasium.Env, seed: int, options: dict[str, Any], observation: str, info: dict[str, Any]
    ) -> tuple[list[int], str, dict[str, Any]]:
        """A short seeded random walk of safe actions (see ``wander_fraction``); none by default."""
        rng = random.Random(stable_seed(self.seed, "wander", options["split"], options["stage"], seed))
        if self.wander_steps == 0 or rng.random() >= self.wander_fraction:
            return [], observation, info
        walk: list[int] = []
        for _ in range(rng.randint(1, self.wander_steps)):
            order = list(range(len(info["valid_actions"])))
            rng.shuffle(order)
            safe = next((a for a in order if self._is_safe(env, a)), None)
            if safe is None:
                break
            observation, _, _, _, info = env.step(safe)
            walk.append(safe)
        return walk, observation, info

    @staticmethod
    def _is_safe(env: gymnasium.Env, action: int) -> bool:
        """``action`` neither ends the episode nor crashes (tried on a copy of the env)."""
        try:
            trial = copy.deepcopy(env)
        except (TypeError, ValueError, copy.Error) as error:  # e.g. ALFWorld's ctypes game state
            raise ReflectRLError(
                f"generate: wander_fraction > 0 needs an env that survives copy.deepcopy, and {env_name(env)} does not "
                f"({' '.join(str(error).split())}); set wander_fraction to 0 for it"
            ) from None
        try:
            _, _, terminated, truncated, info = trial.step(action)
        finally:
            trial.close()
        return not (terminated or truncated or info.get("crashed", False))

    def _negatives(
        self, safe_env: gymnasium.Env, seed: int, options: dict[str, Any], positives: Sequence[_Decision],
        walk: Sequence[int] = (),
    ) -> tuple[list[_Decision], int]:
        """Branch negative examples off an oracle episode (see the module docstring).

        Returns the negatives and how many were skipped (the wrong action ended the episode).
        """
        if self.negatives_per_episode == 0:
            return [], 0
        rng = random.Random(stable_seed(self.seed, "negatives", options["split"], options["stage"], seed))
        # Points where a wrong action exists (some states may have every action optimal).
        candidates = [i for i, d in enumerate(positives) if len(d.optimal_actions) < len(d.valid_actions)]
        points = sorted(rng.sample(candidates, min(self.negatives_per_episode, len(candidates))))
        negatives, skipped = [], 0
        for point in points:
            observation, info = self._reset(safe_env, seed, options)
            for action in walk:  # the random walk the episode began with, if any
                observation, _, _, _, info = safe_env.step(action)
            for decision in positives[:point]:
                self._check_replay(observation, decision)
                observation, _, terminated, truncated, info = safe_env.step(decision.action)
                if terminated or truncated:
                    raise DataError(
                        f"env {self.env_id}: replay of seed {seed} ended early at step {decision.step}"
                    )
            before = positives[point]
            self._check_replay(observation, before)
            facts_before = safe_env.unwrapped.privileged_facts()
            optimal_before = set(int(a) for a in safe_env.unwrapped.oracle_actions())
            wrong_actions = [a for a in range(len(before.valid_actions)) if a not in optimal_before]
            # An env may name the mistakes worth teaching (AutoExplore: reading a wrong sibling
            # file, as in the paper); otherwise any non-optimal action will do. An env whose
            # non-optimal actions are not all mistakes (AutoExplore: `cat` of the right file)
            # sets `negative_actions_only`: no named mistake here, no negative.
            preferred = getattr(safe_env.unwrapped, "negative_actions", None)
            if callable(preferred):
                named = [a for a in preferred() if a not in optimal_before]
                if not named and getattr(safe_env.unwrapped, "negative_actions_only", False):
                    skipped += 1
                    continue
                wrong_actions = named or wrong_actions
            wrong = rng.choice(wrong_actions)
            observation, _, terminated, truncated, info = safe_env.step(wrong)
            optimal = sorted(int(a) for a in safe_env.unwrapped.oracle_actions())
            if terminated or truncated or not optimal:
                skipped += 1  # nothing left to decide after the wrong action
                continue
            negatives.append(
                _Decision(
                    split=before.split,
                    stage=before.stage,
                    seed=seed,
                    step=before.step + 1,
                    observation=observation,
                    valid_actions=[str(a) for a in info["valid_actions"]],
                    action=optimal[0],
                    optimal_actions=optimal,
                    facts=safe_env.unwrapped.privileged_facts(),
                    mistake=Mistake(action=before.valid_actions[wrong], facts_before=facts_before),
                )
            )
        return negatives, skipped

    def _check_replay(self, observation: str, decision: _Decision) -> None:
        # The branch must start from exactly the recorded state, or the mistake would be
        # explained against the wrong facts.
        if observation != decision.observation:
            raise DataError(
                f"env {self.env_id}: replay of seed {decision.seed} diverged at step {decision.step} "
                "(the env is not deterministic given reset(seed=...), or dangerous=False changes it)"
            )

    @staticmethod
    def _check_disjoint(starts: dict[str, set[str]]) -> None:
        """The splits must not share a start state (the env promises it; verify it)."""
        splits = sorted(starts)
        for i, first in enumerate(splits):
            for second in splits[i + 1 :]:
                shared = starts[first] & starts[second]
                if shared:
                    example = sorted(shared)[0]
                    raise DataError(
                        f"splits {first!r} and {second!r} share {len(shared)} start states (e.g. {example})"
                    )

    # ----------------------------------------------------------------------------- teacher
    def _reflect(self, decisions: Sequence[_Decision], journal: ReflectionJournal) -> list[str]:
        """All reflections: the journal's, then the teacher's for the rest, ``teacher_batch_size``
        requests per call, each finished batch appended to the journal.

        A teacher that fails part of a batch (TeacherError) has the parts that worked journaled
        before the run stops with a one-line error; rerunning continues from there.
        """
        requests = [ReflectionRequest(d.observation, d.facts, d.mistake) for d in decisions]
        identity = teacher_identity(self.teacher)
        keys = [request_key(identity, request) for request in requests]
        done = journal.load()
        todo = [i for i, key in enumerate(keys) if key not in done]
        if len(todo) < len(requests):
            logger.info(
                "generate: resuming: %d of %d reflections are in %s", len(requests) - len(todo), len(requests), journal.path
            )
        try:
            for start in range(0, len(todo), self.teacher_batch_size):
                batch = todo[start : start + self.teacher_batch_size]
                try:
                    answers: Sequence[str | None] = self.teacher.reflect([requests[i] for i in batch])
                    failure = None
                except TeacherError as error:
                    answers, failure = error.partial, error
                if len(answers) != len(batch):
                    raise DataError(f"teacher returned {len(answers)} reflections for {len(batch)} requests")
                finished = []
                for i, answer in zip(batch, answers, strict=True):
                    if answer is None:
                        continue
                    # One line: the reflection model is stopped at the first newline.
                    text = sanitize_line(str(answer))
                    if not text:
                        raise DataError("teacher returned an empty reflection")
                    finished.append((keys[i], text))
                journal.append(finished)
                done.update(finished)
                if failure is not None:
                    missing = sum(key not in done for key in keys)
                    first = decisions[next(i for i, answer in zip(batch, answers, strict=True) if answer is None)]
                    where = (
                        f"split {first.split}, stage {first.stage}, seed {first.seed}, step {first.step}"
                        f"{', negative' if first.negative else ''}"
                    )
                    saved = len(requests) - missing
                    progress = (
                        f"{saved} of {len(requests)} reflections are saved in {journal.path}: run the same command "
                        "again to continue"
                        if saved
                        else "no reflection was saved yet: run the same command again once the teacher answers"
                    )
                    raise DataError(f"generate: {failure} (first failed record: {where}); {progress}")
                written = start + len(batch)
                if written == len(todo) or (written // self.teacher_batch_size) % 20 == 0:
                    logger.info("generate: teacher wrote %d/%d reflections", written, len(todo))
        except KeyboardInterrupt:
            saved = sum(key in done for key in keys)
            logger.warning(
                "generate: interrupted; %d of %d reflections are journaled in %s: run the same command again "
                "to continue (a caching teacher does not ask again for replies it already has)",
                saved, len(keys), journal.path,
            )
            raise
        finally:
            self.teacher.close()
        return [done[key] for key in keys]

    # ------------------------------------------------------------------------------ output
    def _records_by_file(
        self, decisions: Sequence[_Decision], reflections: Sequence[str]
    ) -> dict[str, list[dict]]:
        files: dict[str, list[dict]] = {}
        splits = [split for split, count in self.episodes.items() if count > 0]
        for split in splits:
            for kind in KINDS:
                files[f"{kind}.{split}.jsonl"] = []
        for decision, reflection in zip(decisions, reflections, strict=True):
            base = {
                "env": self.env_id,
                "split": decision.split,
                "seed": decision.seed,
                "stage": decision.stage,
                "step": decision.step,
                "observation": decision.observation,
                "reflection": reflection,
                "negative": decision.negative,
            }
            policy = base | {
                "valid_actions": decision.valid_actions,
                "action": decision.action,
                "optimal_actions": decision.optimal_actions,
            }
            split = decision.split
            files[f"reflection_sft.{split}.jsonl"].append(base)
            files[f"policy_sft.{split}.jsonl"].append(policy)
            files[f"plain_sft.{split}.jsonl"].append(policy | {"reflection": None})
            if not decision.negative:
                files[f"reflection_sft_positive.{split}.jsonl"].append(base)
                files[f"policy_sft_positive.{split}.jsonl"].append(policy)
        return files

    @staticmethod
    def _validate(files: dict[str, list[dict]]) -> None:
        """Validate before writing: the readers must accept what is written."""
        for name, records in files.items():
            schema = _KIND_SCHEMAS[name.split(".")[0]]
            for number, record in enumerate(records, start=1):
                validate_record(record, schema, f"{name}:{number}")

    def _manifest(self, files: dict[str, list[dict]], stats: dict[str, Any]) -> dict[str, Any]:
        # No output_dir, time or host in here: the manifest must be byte-identical across runs.
        teacher = _describe(self.teacher)  # (the teacher's repr never holds an API key)
        return {
            "env_id": self.env_id,
            "env_kwargs": self.env_kwargs,
            "args": {
                "env_id": self.env_id,
                "env_kwargs": self.env_kwargs,
                "stages": self.stages,
                "episodes": self.episodes,
                "negatives_per_episode": self.negatives_per_episode,
                "teacher": teacher,
                "seed": self.seed,
                "teacher_batch_size": self.teacher_batch_size,
                "wander_fraction": self.wander_fraction,
                "wander_steps": self.wander_steps,
            },
            "files": {name: len(records) for name, records in files.items()},
            "negatives": stats["negatives"],
            "negatives_skipped": stats["negatives_skipped"],
            "episodes": stats["episodes"],
            "start_states": stats["start_states"],
            "oracle_failures": stats["oracle_failures"],
        }

    def _check_output(self, output: Path) -> None:
        if output.exists() and not output.is_dir():
            raise DataError(f"output_dir {output} exists and is not a folder")
        if output.is_dir() and any(output.iterdir()) and not self.overwrite:
            raise DataError(
                f"output_dir {output} is not empty; set overwrite: true (--overwrite true) to replace it"
            )

    def _write_output(
        self,
        output: Path,
        files: dict[str, list[dict]],
        manifest: dict[str, Any],
        extra_files: dict[str, str] | None = None,
    ) -> None:
        """Write into a temporary sibling folder, then swap it into place.

        An interrupted run leaves ``output_dir`` as it was; the old folder is only deleted after
        the new one is in place.
        """
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
        try:
            for name, records in files.items():
                if records:
                    write_jsonl(staging / name, records)
            for name, text in (extra_files or {}).items():
                (staging / name).write_text(text, encoding="utf-8")
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            # mkdtemp makes a private (0700) folder; give it the permissions of a normal one.
            os.chmod(staging, 0o777 & ~_umask())
            self._check_output(output)  # again: the folder may have been filled meanwhile
            old = None
            if output.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
                os.replace(output, old / output.name)
            try:
                os.replace(staging, output)
            except BaseException:
                if old is not None:
                    os.replace(old / output.name, output)  # put the old data back
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def _describe(obj: object) -> dict[str, str]:
    """Class path (and repr unless it is object's, which holds a memory address) for the manifest."""
    kind = type(obj)
    described = {"class_path": f"{kind.__module__}.{kind.__qualname__}"}
    if kind.__repr__ is not object.__repr__:
        described["repr"] = repr(obj)
    return described


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _count_steps(env_id: str, seed: int, limit: int = 10_000, first: int = 0) -> Iterator[int]:
    """first, first + 1, ...: a safety net against an env that never ends an oracle episode."""
    yield from range(first, first + limit)
    raise DataError(f"env {env_id}: oracle episode with seed {seed} did not end within {limit} steps")


def build_parser() -> Any:
    """The ``reflectrl generate`` parser: ``--config FILE`` plus one flat option per DataGenerator arg."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="reflectrl generate",
        description="Generate teacher SFT datasets (oracle trajectories + negative examples) as JSONL.",
        exit_on_error=False,  # errors come back as exceptions, reported as one line
        allow_abbrev=False,  # `--overwrit true` must not pass for `--overwrite true`
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with the options below.")
    parser.add_class_arguments(DataGenerator, None, fail_untyped=True)
    return parser


def generate_main(args: list[str] | None = None) -> None:
    """``reflectrl generate``: parse ``--config FILE`` and overrides, then run the generator.

    Problems with the options raise :class:`UsageError` with a one-line message (an unknown
    key: ``generate: Option 'bogus' is not accepted``; a YAML error names the file and line); ``--help`` and ``--print_config`` print
    and exit as usual. Returns None (so a console script's exit status stays 0).
    """
    from argparse import ArgumentError

    parser = build_parser()
    try:
        config = parser.parse_args(args)
        # ``instantiate`` replaced ``instantiate_classes`` in jsonargparse 4.49.
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
        objects = instantiate(config)
    except ArgumentError as error:
        detail = config_file_problem(args) or summarize_parse_error(str(error))
        raise UsageError(f"generate: {detail}") from None
    names = [name for name in inspect.signature(DataGenerator.__init__).parameters if name != "self"]
    generator = DataGenerator(**{name: objects[name] for name in names})
    summary = generator.run()
    logger.info("generate: files: %s", json.dumps(summary["files"]))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate_main()
