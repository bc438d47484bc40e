"""``make fuzz``: the mutation fuzzer of tests/mutfuzz.py, a million inputs across processes.

    .venv/bin/python bench/mutfuzz.py [--inputs 1000000] [--workers 2] [--seed 1]

Prints the seeds (task k of ``--chunk`` inputs runs on seed ``--seed`` + k, so a problem's
"seed S, input N" is found again with ``mutfuzz.run(N + 1, S)``), inputs per second, the
outcome histogram, what each adapter answered, and every crash, disagreement or slow input;
exits non-zero when there is any.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import mutfuzz


def work(args: tuple[int, int]) -> mutfuzz.Report:
    inputs, seed = args
    return mutfuzz.run(inputs, seed)


def print_adapters(total: mutfuzz.Report) -> None:
    """Per adapter (ASGI, WSGI, Django sync and async, DRF): the inputs it answered, by status."""
    table: dict[str, dict[int, int]] = {}
    for key, count in total.adapters.items():
        adapter, status = key.rsplit(" ", 1)
        table.setdefault(adapter, {})[int(status)] = count
    statuses = sorted({status for row in table.values() for status in row})
    print()
    print("| adapter | inputs | " + " | ".join(map(str, statuses)) + " |")
    print("|---|---|" + "---|" * len(statuses))
    for adapter, row in table.items():
        cells = " | ".join(f"{row.get(status, 0):,}" for status in statuses)
        print(f"| {adapter} | {sum(row.values()):,} | {cells} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=50_000, help="inputs per task (at most)")
    args = parser.parse_args()
    # A short run is split too, so that every worker has a task.
    chunk = max(1, min(args.chunk, math.ceil(args.inputs / args.workers)))
    tasks = []
    left, seed = args.inputs, args.seed
    while left > 0:
        tasks.append((min(chunk, left), seed))
        left -= chunk
        seed += 1
    started = time.perf_counter()
    total = mutfuzz.Report()
    with multiprocessing.Pool(args.workers) as pool:
        for report in pool.imap_unordered(work, tasks):
            total.merge(report)
    seconds = time.perf_counter() - started
    seeds = f"seed {args.seed}" if len(tasks) == 1 else f"seeds {args.seed}..{tasks[-1][1]}"
    print(
        f"mutfuzz: {total.inputs:,} inputs in {seconds:.0f} s on {args.workers} processes "
        f"({total.inputs / seconds:,.0f} inputs/s); slowest input {total.slowest * 1000:.1f} ms; "
        f"--seed {args.seed} ({len(tasks)} tasks of <= {chunk:,} inputs, {seeds})"
    )
    print("| outcome | inputs |")
    print("|---|---|")
    for label, count in total.outcomes.most_common():
        print(f"| {label} | {count:,} |")
    print_adapters(total)
    for line in total.crashes + total.disagreements:
        print("PROBLEM:", line)
    print(f"crashes: {len(total.crashes)}, disagreements: {len(total.disagreements)}")
    return 1 if total.crashes or total.disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
