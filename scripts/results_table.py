"""Print the measured results table (markdown) from the results.json files of finished runs.

    python scripts/results_table.py runs/taxi

For every run folder under the given root (``<root>/<name>/version_N/results.json``, latest
version per name) prints one row per run: success rate and crash rate of each evaluated stage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def latest_results(root: Path) -> dict[str, list[dict]]:
    """Run name -> the entries of its latest version's results.json."""
    found: dict[str, list[dict]] = {}
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = sorted(run.glob("version_*/results.json"), key=lambda p: int(p.parent.name.split("_")[1]))
        if versions:
            found[run.name] = json.loads(versions[-1].read_text(encoding="utf-8"))
    return found


def main(argv: list[str]) -> None:
    root = Path(argv[0] if argv else "runs/taxi")
    runs = latest_results(root)
    stages = sorted({entry["stage"] for entries in runs.values() for entry in entries})
    print("| run | " + " | ".join(f"{s} success | {s} crash" for s in stages) + " | episodes |")
    print("|---|" + "---|---|" * len(stages) + "---|")
    for name, entries in runs.items():
        by_stage = {entry["stage"]: entry for entry in entries}
        cells = []
        for stage in stages:
            entry = by_stage.get(stage)
            cells += [f"{entry['success_rate']:.1%}", f"{entry['crash_rate']:.1%}"] if entry else ["-", "-"]
        episodes = sorted({int(entry["episodes"]) for entry in entries})
        print(f"| {name} | " + " | ".join(cells) + f" | {'/'.join(map(str, episodes))} |")


if __name__ == "__main__":
    main(sys.argv[1:])
