"""Time and memory of one AutoExplore step on a repository holding a 1 GB file.

    python -m benchmarks.autoexplore_sandbox [--size-gb 1] [--steps 200]

Builds a temporary repository with a sparse file of ``--size-gb`` GB (text at its start, so it is
read as text, not skipped as binary), a dense 64 MB file, a FIFO without a writer and ordinary
files; then times ``cat`` of each and ``cd``/``id`` steps, and reports the peak resident memory
growth of this process over all steps (``ru_maxrss``). The read limit (``max_read_bytes``, 16 kB by
default) bounds both, whatever the file size.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from reflectrl.envs.autoexplore import AutoExploreEnv


def build_repository(folder: Path, size_gb: float) -> None:
    (folder / "pkg").mkdir()
    (folder / "pkg" / "answer.py").write_text("class Answer:\n    pass\n")
    (folder / "small.py").write_text('"""A small module."""\nVALUE = 1\n')
    with (folder / "huge.py").open("wb") as handle:
        handle.write(b'"""A huge module."""\n' + b"x = 1\n" * 10_000)
        handle.truncate(int(size_gb * (1 << 30)))  # sparse: costs no disk
    with (folder / "dense.py").open("wb") as handle:
        line = b"y = 2  # a dense line of text\n"
        handle.write(line * ((64 << 20) // len(line)))
    os.mkfifo(folder / "pipe.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=200, help="timed repetitions per command")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_repository(root, args.size_gb)
        env = AutoExploreEnv(root=str(root), tasks=[{"question": "Which file defines Answer?", "targets": ["pkg/answer.py"]}],
                             dangerous=False, horizon=10**9)
        env.reset(seed=0)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"repository: huge.py {os.path.getsize(root / 'huge.py') / (1 << 30):.2f} GB (sparse), "
              f"dense.py {os.path.getsize(root / 'dense.py') / (1 << 20):.0f} MB, a FIFO without writer")
        print(f"{'command':<14} {'median ms':>10} {'max ms':>8}")
        # "cd pkg" and "cd .." alternate so that every timed step is a real move.
        for commands in (["cat huge.py"], ["cat dense.py"], ["cat pipe.py"], ["cat small.py"], ["cd pkg", "cd .."],
                         ["id small.py"]):
            times: dict[str, list[float]] = {command: [] for command in commands}
            for _ in range(args.steps):
                for command in commands:
                    started = time.perf_counter()
                    info = env.step(command)[4]
                    times[command].append(1000 * (time.perf_counter() - started))
                    # A FIFO is no valid target of cat: refused without being opened.
                    assert (info["event"] == "invalid") == (command == "cat pipe.py"), command
            for command, values in times.items():
                print(f"{command:<14} {statistics.median(values):>10.3f} {max(values):>8.3f}")
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        print(f"peak RSS growth over all steps: {grown / 1024:.1f} MB (read limit {env._sandbox_options['max_read_bytes']} bytes)")


if __name__ == "__main__":
    main()
