"""ALFWorld-format games generated offline from the alfworld wheel's own PDDL domain and grammar.

The published ALFWorld games need a download (``alfworld-download``); these need nothing but the
installed ``alfworld`` package, so the whole ALFWorld pipeline runs (and is tested) on a fresh
machine. Each game is a folder in the layout of ``$ALFWORLD_DATA/json_2.1.1``::

    {output_dir}/{split}/{task_type}-{Object}-None-{Receptacle}-{scene}/trial_{n:05d}/
        traj_data.json       task_type + pddl_params (what upstream's text side reads)
        initial_state.pddl   the PDDL problem (domain ``alfred``)
        game.tw-pddl         {pddl_domain, grammar (task sentence filled in), pddl_problem,
                              solvable: true, walkthrough: the planner's solution}

so :class:`reflectrl.envs.alfworld.ALFWorldEnv` plays them through the same code path as the
published games.

**Rooms.** Four room kinds after ALFRED's scenes (kitchen, living room, bedroom, bathroom), each
with its receptacle types (counts drawn per scene), its object types and, for bedrooms and
living rooms, a desk lamp. A *scene* is one concrete room (scene numbers as ALFRED's: kitchens
1-, living rooms 201-, bedrooms 301-, bathrooms 401-). ``train`` and ``valid_seen`` games are
set in the same scenes (in-distribution); ``valid_unseen`` games in scenes no other split uses
(out-of-distribution, as ALFWorld's split).

**Goals.** A family names a task type and optionally the object and receptacle types (the
paper's family: ``pick_and_place_simple`` with Tomato and Microwave). Goals are drawn only where
they are reachable: the goal receptacle type can contain the object type (``canContain``, from
``alfworld.gen.constants``), the object is heatable/coolable/cleanable as the task needs, the
room has the tool (microwave, fridge, sink basin, desk lamp); the goal does not hold at the
start. Every game is then solved by the planner before it is written (its plan is the
walkthrough); a family that can never be reached is a one-line error.

Deterministic: every choice comes from a per-game RNG seeded from ``(seed, split, family,
index)``; the same arguments write byte-identical files. Written atomically (a staging folder
swapped into place); an existing folder made with the same arguments is reused as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reflectrl.envs.alfworld import TASK_TYPES, TOOL_OF_TASK, preserved_argv, require_alfworld
from reflectrl.errors import ReflectRLError
from reflectrl.generate import EnvPreparation, Prepared, stable_seed

logger = logging.getLogger("reflectrl.alfworld")

MANIFEST = "games_manifest.json"
"""Written into the games folder: the arguments and counts (reuse is decided on it)."""

SPLITS: tuple[str, ...] = ("train", "valid_seen", "valid_unseen")

# Receptacles the domain's actions need by type name (CleanObject: SinkBasin, HeatObject:
# Microwave, CoolObject: Fridge) and the object types its constants name; every problem declares
# them, or the PDDL translator rejects the domain.
_DOMAIN_RTYPES = ("SinkBasin", "Microwave", "Fridge")
_DOMAIN_OTYPES = ("Knife", "ButterKnife")

_PROPERTY_OF_TASK = {
    "pick_clean_then_place_in_recep": "Cleanable",
    "pick_heat_then_place_in_recep": "Heatable",
    "pick_cool_then_place_in_recep": "Coolable",
}
_LAMP = "DeskLamp"
_LAMP_STANDS = ("Desk", "SideTable", "Dresser")
# Upstream's id mangling keeps "basin" receptacles as parts of their fixture
# ("Sink|...|SinkBasin"): AlfredDemangler names them "sinkbasin N" from that form only.
_BASIN_FIXTURE = {"SinkBasin": "Sink", "BathtubBasin": "Bathtub"}


@dataclass(frozen=True)
class RoomKind:
    """A kind of room: receptacle types with (min, max) counts, object types, whether a lamp."""

    name: str
    first_scene: int
    receptacles: dict[str, tuple[int, int]]
    objects: tuple[str, ...]
    lamp: bool = False


ROOM_KINDS: tuple[RoomKind, ...] = (
    RoomKind(
        "kitchen",
        1,
        {
            "CounterTop": (1, 2), "Cabinet": (2, 4), "Drawer": (1, 3), "Fridge": (1, 1), "Microwave": (1, 1),
            "SinkBasin": (1, 1), "StoveBurner": (1, 2), "DiningTable": (0, 1), "GarbageCan": (1, 1),
            "Shelf": (0, 1), "CoffeeMachine": (0, 1),
        },
        (
            "Apple", "Tomato", "Potato", "Bread", "Lettuce", "Egg", "Mug", "Cup", "Bowl", "Plate", "Pan", "Pot",
            "Knife", "Spoon", "Fork", "Spatula", "Ladle", "Kettle", "SaltShaker", "PepperShaker", "DishSponge",
            "WineBottle",
        ),
    ),
    RoomKind(
        "livingroom",
        201,
        {
            "Sofa": (1, 1), "ArmChair": (0, 1), "CoffeeTable": (1, 1), "SideTable": (1, 2), "Drawer": (0, 2),
            "Shelf": (0, 2), "Cabinet": (0, 2), "Dresser": (0, 1), "GarbageCan": (0, 1),
        },
        ("RemoteControl", "KeyChain", "CreditCard", "Newspaper", "Book", "Statue", "Vase", "Box", "Laptop",
         "Watch", "Pillow", "CellPhone", "TissueBox"),
        lamp=True,
    ),
    RoomKind(
        "bedroom",
        301,
        {
            "Bed": (1, 1), "Desk": (0, 1), "SideTable": (1, 2), "Dresser": (0, 1), "Drawer": (1, 3),
            "Shelf": (0, 2), "GarbageCan": (0, 1), "Safe": (0, 1),
        },
        ("Book", "CellPhone", "Pen", "Pencil", "KeyChain", "CreditCard", "CD", "AlarmClock", "Pillow", "Laptop",
         "Watch", "Mug", "Bowl"),
        lamp=True,
    ),
    RoomKind(
        "bathroom",
        401,
        {
            "CounterTop": (1, 1), "SinkBasin": (1, 2), "Toilet": (1, 1), "Cabinet": (1, 3), "Drawer": (0, 2),
            "TowelHolder": (0, 1), "HandTowelHolder": (0, 1), "GarbageCan": (1, 1), "Shelf": (0, 1),
            "BathtubBasin": (0, 1),
        },
        ("SoapBar", "SoapBottle", "SprayBottle", "ToiletPaper", "Candle", "Cloth", "DishSponge", "HandTowel",
         "TissueBox"),
    ),
)


@dataclass(frozen=True)
class GameFamily:
    """Which goals to generate: a task type and, optionally, the object and receptacle types.

    For ``look_at_obj_in_light`` the receptacle is the lamp (``DeskLamp``).
    """

    task_type: str
    object: str | None = None
    receptacle: str | None = None

    def label(self) -> str:
        return "-".join([self.task_type, self.object or "any", self.receptacle or "any"])


DEFAULT_FAMILIES: tuple[GameFamily, ...] = tuple(GameFamily(task_type) for task_type in TASK_TYPES)
PAPER_FAMILY = GameFamily("pick_and_place_simple", "Tomato", "Microwave")
"""The single family of the paper's ALFWorld experiment: put a tomato in the microwave."""


@dataclass
class Scene:
    """One concrete room: its kind, number and receptacles (type, id) in a fixed order."""

    kind: RoomKind
    number: int
    receptacles: list[tuple[str, str]] = field(default_factory=list)

    def types(self) -> set[str]:
        return {rtype for rtype, _ in self.receptacles}


@dataclass
class _Game:
    """A drawn game, before it is written."""

    family: GameFamily
    scene: Scene
    task_type: str
    object_type: str
    receptacle_type: str  # goal receptacle, or the lamp for look_at_obj_in_light
    objects: list[tuple[str, str, str]]  # (type, id, receptacle id)
    lamp: tuple[str, str] | None  # (id, receptacle id)
    sentence: str
    problem: str = ""


def _mangle(object_type: str, number: int, scene: int) -> str:
    """An ALFRED-style id (``Apple|+03.01|+00.00|+00.00`` mangled); unique per game by ``number``."""
    fixture = _BASIN_FIXTURE.get(object_type, object_type)
    text = f"{fixture}_bar__plus_{scene % 100:02d}_dot_{number:02d}_bar__plus_00_dot_00_bar__plus_00_dot_00"
    return text + ("_bar_" + object_type if object_type in _BASIN_FIXTURE else "")


class ALFWorldGames(EnvPreparation):
    """Writes ALFWorld-format games for ``reflectrl generate`` (a ``prepare`` step; see the module docstring).

    Args:
        output_dir: Folder the games go to (``{split}/...`` inside); never the SFT data folder.
        games: Games per family and split, e.g. ``{"train": 40, "valid_seen": 10, "valid_unseen": 10}``.
        families: Goal families (default: the six task types, any object and receptacle).
        seen_scenes: Scenes per room kind shared by ``train`` and ``valid_seen``.
        unseen_scenes: Scenes per room kind used only by ``valid_unseen``.
        distractors: (min, max) other objects placed per game.
        overwrite: Replace an existing folder made with other arguments (otherwise refuse).
    """

    def __init__(
        self,
        output_dir: str = "data/alfworld_games",
        games: dict[str, int] = {"train": 40, "valid_seen": 10, "valid_unseen": 10},  # noqa: B006  (copied)
        families: list[GameFamily] = list(DEFAULT_FAMILIES),  # noqa: B006,B008  (copied, never mutated)
        seen_scenes: int = 6,
        unseen_scenes: int = 3,
        distractors: tuple[int, int] = (2, 6),
        overwrite: bool = False,
    ) -> None:
        self.output_dir = output_dir
        self.games = {str(split): int(count) for split, count in games.items()}
        self.families = [family if isinstance(family, GameFamily) else GameFamily(**family) for family in families]
        self.seen_scenes = int(seen_scenes)
        self.unseen_scenes = int(unseen_scenes)
        self.distractors = (int(distractors[0]), int(distractors[1]))
        self.overwrite = bool(overwrite)
        unknown = sorted(set(self.games) - set(SPLITS))
        if unknown:
            raise ReflectRLError(f"ALFWorld games: unknown splits {unknown}; use {list(SPLITS)}")
        if any(count < 0 for count in self.games.values()) or not any(self.games.values()):
            raise ReflectRLError(f"ALFWorld games: counts must be >= 0 and not all 0, got {self.games}")
        if not self.families:
            raise ReflectRLError("ALFWorld games: families must name at least one family")
        for family in self.families:
            if family.task_type not in TASK_TYPES:
                raise ReflectRLError(
                    f"ALFWorld games: unknown task type {family.task_type!r}; known: {list(TASK_TYPES)}"
                )
        if self.seen_scenes < 1 or self.unseen_scenes < 1:
            raise ReflectRLError("ALFWorld games: seen_scenes and unseen_scenes must be >= 1")
        if not 0 <= self.distractors[0] <= self.distractors[1]:
            raise ReflectRLError(f"ALFWorld games: distractors must be (min, max) with 0 <= min <= max, got {distractors}")

    def __repr__(self) -> str:
        return (
            f"ALFWorldGames(output_dir={self.output_dir!r}, games={self.games}, families={self.families}, "
            f"seen_scenes={self.seen_scenes}, unseen_scenes={self.unseen_scenes}, distractors={self.distractors})"
        )

    # ------------------------------------------------------------------------------ public
    def describe(self, seed: int) -> dict[str, Any]:
        """What decides the games' content (the reuse key); no paths, times or hosts."""
        return {
            "seed": int(seed),
            "games": self.games,
            "families": [asdict(family) for family in self.families],
            "seen_scenes": self.seen_scenes,
            "unseen_scenes": self.unseen_scenes,
            "distractors": list(self.distractors),
            "alfworld": _alfworld_version(),
        }

    def prepare(self, seed: int) -> Prepared:
        """Write (or reuse) the games; the env is pointed at them through ``data_root``."""
        summary = self.build(seed)
        return Prepared(env_kwargs={"data_root": str(self.output_dir)}, manifest=summary)

    def build(self, seed: int) -> dict[str, Any]:
        """Generate, verify and write all games into ``output_dir``; returns the manifest."""
        require_alfworld()
        output = Path(self.output_dir)
        args = self.describe(seed)
        existing = _read_manifest(output)
        if existing is not None and existing.get("args") == args:
            logger.info("ALFWorld games: reusing %s (made with the same arguments)", output)
            return existing
        if output.exists() and (not output.is_dir() or any(output.iterdir())) and not self.overwrite:
            raise ReflectRLError(
                f"ALFWorld games: {output} exists and was made with other arguments; set overwrite: true to replace it"
            )
        started = time.perf_counter()
        domain, grammar = _wheel_logic()
        scenes = self._scenes(seed)
        counts: dict[str, dict[str, int]] = {}
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
        try:
            seen_problems: dict[str, str] = {}
            verifier = _Verifier()
            for split in SPLITS:
                pool = scenes["unseen" if split == "valid_unseen" else "seen"]
                for family in self.families:
                    for index in range(self.games.get(split, 0)):
                        game = self._draw(seed, split, family, index, pool)
                        key = hashlib.sha256(game.problem.encode()).hexdigest()
                        if key in seen_problems and seen_problems[key] != split:
                            continue  # the same game in two splits would leak; keep it in the first
                        seen_problems[key] = split
                        folder = staging / split / _game_folder(game) / f"trial_{index:05d}"
                        self._write(folder, game, domain, grammar, verifier)
                        counts.setdefault(split, {}).setdefault(family.label(), 0)
                        counts[split][family.label()] += 1
            manifest = {"args": args, "games": counts}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            os.chmod(staging, 0o755)
            old = None
            if output.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
                os.replace(output, old / output.name)
            os.replace(staging, output)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        total = sum(sum(per.values()) for per in counts.values())
        logger.info("ALFWorld games: wrote %d games to %s in %.1f s", total, output, time.perf_counter() - started)
        return manifest

    # ------------------------------------------------------------------------------ scenes
    def _scenes(self, seed: int) -> dict[str, list[Scene]]:
        """Seen and unseen scenes of every room kind (disjoint scene numbers)."""
        pools: dict[str, list[Scene]] = {"seen": [], "unseen": []}
        for kind in ROOM_KINDS:
            for offset in range(self.seen_scenes + self.unseen_scenes):
                number = kind.first_scene + offset
                rng = random.Random(stable_seed(seed, "alfworld-scene", number))
                scene = Scene(kind, number)
                serial = 0
                for rtype, (low, high) in kind.receptacles.items():
                    for _ in range(rng.randint(low, high)):
                        serial += 1
                        scene.receptacles.append((rtype, _mangle(rtype, serial, number)))
                pools["seen" if offset < self.seen_scenes else "unseen"].append(scene)
        return pools

    # ------------------------------------------------------------------------------- goals
    def _draw(self, seed: int, split: str, family: GameFamily, index: int, pool: list[Scene]) -> _Game:
        rng = random.Random(stable_seed(seed, "alfworld-game", split, family.label(), index))
        options = _goal_options(family, pool)
        if not options:
            raise ReflectRLError(f"ALFWorld games: family {family.label()} has no reachable goal in any room: {_why(family)}")
        scene, object_type, receptacle_type = rng.choice(options)
        return _place(rng, scene, family.task_type, object_type, receptacle_type, self.distractors, family)

    def _write(self, folder: Path, game: _Game, domain: str, grammar: str, verifier: _Verifier) -> None:
        folder.mkdir(parents=True)
        traj = {
            "task_type": game.task_type,
            "pddl_params": {
                "object_sliced": False,
                "object_target": game.object_type,
                "parent_target": "" if game.task_type == "look_at_obj_in_light" else game.receptacle_type,
                "toggle_target": game.receptacle_type if game.task_type == "look_at_obj_in_light" else "",
                "mrecep_target": "",
            },
            "scene": {"scene_num": game.scene.number, "room": game.scene.kind.name},
            "generated_by": "reflectrl.alfworld_games",
        }
        data = {
            "pddl_domain": domain,
            "grammar": grammar.replace("UNKNOWN GOAL", game.sentence),
            "pddl_problem": game.problem,
            "solvable": True,
            "walkthrough": None,
        }
        plan = verifier.solve(data, folder)
        if not plan:
            raise ReflectRLError(f"ALFWorld games: the planner found no plan for {folder.name} ({game.family.label()})")
        data["walkthrough"] = plan
        (folder / "traj_data.json").write_text(json.dumps(traj, indent=1) + "\n", encoding="utf-8")
        (folder / "initial_state.pddl").write_text(game.problem, encoding="utf-8")
        (folder / "game.tw-pddl").write_text(json.dumps(data) + "\n", encoding="utf-8")


def _why(family: GameFamily) -> str:
    """Why a family cannot be reached (for the one-line error)."""
    constants = _constants()
    if family.object and family.receptacle and family.task_type != "look_at_obj_in_light":
        if family.object not in constants.VAL_RECEPTACLE_OBJECTS.get(family.receptacle, ()):
            return f"a {family.receptacle} cannot contain a {family.object} (canContain)"
    needed = _PROPERTY_OF_TASK.get(family.task_type)
    if needed and family.object and family.object not in constants.VAL_ACTION_OBJECTS[needed]:
        return f"a {family.object} is not {needed.lower()}"
    if family.task_type == "look_at_obj_in_light" and family.receptacle not in (None, _LAMP):
        return f"the lamp must be {_LAMP}"
    return "no room kind has both the object and the receptacle"


def _goal_options(family: GameFamily, pool: list[Scene]) -> list[tuple[Scene, str, str]]:
    """Every (scene, object type, goal receptacle type) of the pool that the family allows."""
    constants = _constants()
    contain = constants.VAL_RECEPTACLE_OBJECTS
    options = []
    for scene in pool:
        kind = scene.kind
        types = scene.types()
        tool = TOOL_OF_TASK.get(family.task_type)
        if tool is not None and tool not in types:
            continue
        look = family.task_type == "look_at_obj_in_light"
        if look and not (kind.lamp and types & set(_LAMP_STANDS)):
            continue
        objects = [family.object] if family.object else list(kind.objects)
        needed = _PROPERTY_OF_TASK.get(family.task_type)
        for object_type in objects:
            if needed and object_type not in constants.VAL_ACTION_OBJECTS[needed]:
                continue
            if look:
                if family.receptacle not in (None, _LAMP):
                    continue
                goals = [_LAMP]
            else:
                goals = sorted(
                    rtype for rtype in types
                    if object_type in contain.get(rtype, ()) and rtype != tool
                    and (family.receptacle is None or rtype == family.receptacle)
                )
            for goal in goals:
                # The object must start somewhere that is not a goal receptacle.
                starts = [r for r in types if object_type in contain.get(r, ()) and r != goal]
                if starts:
                    options.append((scene, object_type, goal))
    return options


def _place(
    rng: random.Random,
    scene: Scene,
    task_type: str,
    object_type: str,
    receptacle_type: str,
    distractors: tuple[int, int],
    family: GameFamily,
) -> _Game:
    """Place the target object(s), the lamp and distractors; build the PDDL problem."""
    constants = _constants()
    contain = constants.VAL_RECEPTACLE_OBJECTS
    serial = 50  # object numbers after the receptacles' (ids must be unique per game)
    look = task_type == "look_at_obj_in_light"

    def receptacles_for(otype: str, avoid: str | None) -> list[str]:
        return [rid for rtype, rid in scene.receptacles if otype in contain.get(rtype, ()) and rtype != avoid]

    objects: list[tuple[str, str, str]] = []
    copies = 2 if task_type == "pick_two_obj_and_place" else 1
    for _ in range(copies):
        serial += 1
        objects.append((object_type, _mangle(object_type, serial, scene.number), rng.choice(receptacles_for(object_type, None if look else receptacle_type))))
    lamp = None
    if look:
        stands = [rid for rtype, rid in scene.receptacles if rtype in _LAMP_STANDS]
        serial += 1
        lamp = (_mangle(_LAMP, serial, scene.number), rng.choice(stands))
    others = [o for o in scene.kind.objects if o != object_type and receptacles_for(o, None)]
    for _ in range(rng.randint(*distractors)):
        other = rng.choice(others)
        serial += 1
        objects.append((other, _mangle(other, serial, scene.number), rng.choice(receptacles_for(other, None))))
    template = rng.choice(_goal_library().gdict[task_type]["templates"])
    sentence = template.format(
        obj=object_type.lower(), recep=receptacle_type.lower(), toggle=receptacle_type.lower(), mrecep=""
    )
    game = _Game(family, scene, task_type, object_type, receptacle_type, objects, lamp, sentence)
    game.problem = _problem_text(game)
    return game


def _problem_text(game: _Game) -> str:
    """The PDDL problem of a drawn game (domain ``alfred``)."""
    constants = _constants()
    scene = game.scene
    otypes = sorted({otype for otype, _, _ in game.objects} | set(_DOMAIN_OTYPES) | ({_LAMP} if game.lamp else set()))
    rtypes = sorted(scene.types() | set(_DOMAIN_RTYPES))
    location = {rid: f"loc_bar_{i + 1}_bar_{scene.number}" for i, (_, rid) in enumerate(scene.receptacles)}
    start = f"loc_bar_0_bar_{scene.number}"
    declared = ["agent1 - agent"]
    declared += [f"{t}Type - otype" for t in otypes] + [f"{t}Type - rtype" for t in rtypes]
    declared += [f"{oid} - object" for _, oid, _ in game.objects]
    if game.lamp:
        declared.append(f"{game.lamp[0]} - object")
    declared += [f"{rid} - receptacle" for _, rid in scene.receptacles]
    declared += [f"{name} - location" for name in (start, *location.values())]
    init = [f"(atLocation agent1 {start})"]
    for rtype, rid in scene.receptacles:
        init += [f"(receptacleType {rid} {rtype}Type)", f"(receptacleAtLocation {rid} {location[rid]})"]
        if rtype in constants.OPENABLE_CLASS_SET:
            init.append(f"(openable {rid})")
    for otype, oid, rid in game.objects:
        init += [
            f"(objectType {oid} {otype}Type)",
            f"(pickupable {oid})",
            f"(inReceptacle {oid} {rid})",
            f"(objectAtLocation {oid} {location[rid]})",
        ]
        for property_name, predicate in (("Heatable", "heatable"), ("Coolable", "coolable"), ("Cleanable", "cleanable")):
            if otype in constants.VAL_ACTION_OBJECTS[property_name]:
                init.append(f"({predicate} {oid})")
    if game.lamp:
        lamp_id, stand = game.lamp
        init += [
            f"(objectType {lamp_id} {_LAMP}Type)",
            f"(toggleable {lamp_id})",
            f"(inReceptacle {lamp_id} {stand})",
            f"(objectAtLocation {lamp_id} {location[stand]})",
        ]
    for rtype in rtypes:
        for otype in otypes:
            if otype in constants.VAL_RECEPTACLE_OBJECTS.get(rtype, ()):
                init.append(f"(canContain {rtype}Type {otype}Type)")
    goal = _goal_library().gdict[game.task_type]["pddl"].replace("#", "-")
    goal = goal.format(obj=game.object_type, recep=game.receptacle_type, toggle=game.receptacle_type, mrecep="")
    name = f"{game.task_type}_{game.object_type}_{game.receptacle_type}_{scene.number}"
    return (
        f"(define (problem {name})\n(:domain alfred)\n(:objects\n    "
        + "\n    ".join(declared)
        + "\n)\n(:init\n    "
        + "\n    ".join(init)
        + "\n)\n"
        + "\n".join(line.rstrip() for line in goal.strip("\n").splitlines())
        + "\n"
    )


def _game_folder(game: _Game) -> str:
    return f"{game.task_type}-{game.object_type}-None-{game.receptacle_type}-{game.scene.number}"


class _Verifier:
    """Loads a game in an in-process PddlEnv and asks the planner for a plan.

    The planner is sound for the domain, so a plan proves the goal reachable; playing it through
    would cost a grammar derivation per admissible command per step (the env tests play them).
    """

    def __init__(self) -> None:
        textworld, alfred, pddl_env_class = require_alfworld()
        self._pddl = pddl_env_class(textworld.EnvInfos(won=True, admissible_commands=True))
        self._engine = alfred.AlfredDemangler(self._pddl)

    def solve(self, data: dict[str, Any], folder: Path) -> list[str]:
        try:
            with preserved_argv():
                self._engine.load(data)
                return list(self._pddl._pddl_state.replan(self._pddl._entity_infos))
        except KeyError as error:
            raise ReflectRLError(
                f"ALFWorld games: {folder.name} is unsolvable (PDDL translation failed: KeyError {error})"
            ) from None


def _wheel_logic() -> tuple[str, str]:
    """The PDDL domain and TextWorld grammar shipped in the alfworld wheel."""
    import importlib.resources

    data = importlib.resources.files("alfworld") / "data"
    return (data / "alfred.pddl").read_text(encoding="utf-8"), (data / "alfred.twl2").read_text(encoding="utf-8")


def _constants() -> Any:
    require_alfworld()
    import alfworld.gen.constants as constants

    return constants


def _goal_library() -> Any:
    require_alfworld()
    import alfworld.gen.goal_library as goal_library

    return goal_library


def _alfworld_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("alfworld")
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _read_manifest(output: Path) -> dict[str, Any] | None:
    try:
        return json.loads((output / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
