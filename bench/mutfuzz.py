"""``make fuzz``: the mutation fuzzer of tests/mutfuzz.py, a million inputs across processes.

    .venv/bin/python bench/mutfuzz.py [--inputs 1000000] [--workers 2] [--seed 1]

Prints inputs per second, the outcome histogram and every crash, disagreement or slow input;
exits non-zero when there is any.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import mutfuzz


def work(args: tuple[int, int]) -> mutfuzz.Report:
    inputs, seed = args
    return mutfuzz.run(inputs, seed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=50_000, help="inputs per task")
    args = parser.parse_args()
    tasks = []
    left, seed = args.inputs, args.seed
    while left > 0:
        tasks.append((min(args.chunk, left), seed))
        left -= args.chunk
        seed += 1
    started = time.perf_counter()
    total = mutfuzz.Report()
    with multiprocessing.Pool(args.workers) as pool:
        for report in pool.imap_unordered(work, tasks):
            total.merge(report)
    seconds = time.perf_counter() - started
    print(
        f"mutfuzz: {total.inputs:,} inputs in {seconds:.0f} s on {args.workers} processes "
        f"({total.inputs / seconds:,.0f} inputs/s); slowest input {total.slowest * 1000:.1f} ms"
    )
    print("| outcome | inputs |")
    print("|---|---|")
    for label, count in total.outcomes.most_common():
        print(f"| {label} | {count:,} |")
    for line in total.crashes + total.disagreements:
        print("PROBLEM:", line)
    print(f"crashes: {len(total.crashes)}, disagreements: {len(total.disagreements)}")
    return 1 if total.crashes or total.disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
