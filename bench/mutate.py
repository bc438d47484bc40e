"""``make mutate``: mutation testing of the decision modules, with a small harness of our own.

    .venv/bin/python bench/mutate.py [--modules verify,rules,...] [--workers 2] [--limit N]

Each mutant changes one thing in one module's source (a comparison flipped, a boolean operator
swapped, a ``not`` dropped, a constant moved by one, a ``raise`` turned into ``pass``, a
returned ``True``/``False`` inverted), is put first on ``PYTHONPATH`` as a copy of ``src/``,
and the tests that cover that module run against it (``pytest -x``, bounded in time). A mutant
is killed when they fail (or time out). Prints the kill ratio per module and every survivor
(module, line, what changed), the list to judge: a test that notices, or an equivalent mutant
named with why in bench/README.md. Exit status 0 always: the number is the report.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "bearerguard"
PYTHON = str(ROOT / ".venv" / "bin" / "python")

# module -> the tests that exercise it (fast, in process)
TESTS: dict[str, list[str]] = {
    "verify": [
        "tests/test_advisories.py",
        "tests/test_hostile.py",
        "tests/test_reasons.py",
        "tests/test_pinned.py",
        "tests/test_fuzz.py",
    ],
    "keys": [
        "tests/test_cache.py",
        "tests/test_recovery.py",
        "tests/test_pinned.py",
        "tests/test_faults.py",
    ],
    "rules": ["tests/test_rules.py", "tests/test_pinned.py", "tests/test_parity.py"],
    "bearer": ["tests/test_bearer.py", "tests/test_reasons.py", "tests/test_pinned.py"],
    "server": [
        "tests/test_config.py",
        "tests/test_observe.py",
        "tests/test_reasons.py",
        "tests/test_cache.py",
        "tests/test_dpop.py",
        "tests/test_pinned.py",
    ],
    "errors": [
        "tests/test_errors.py",
        "tests/test_reasons.py",
        "tests/test_pinned.py",
        "tests/test_dpop.py",
        "tests/test_parity.py",
    ],
    "dpop": [
        "tests/test_dpop.py",
        "tests/test_reasons.py",
        "tests/test_dpop_client.py",
        "tests/test_dpop_http.py",
    ],
    "replay": ["tests/test_dpop.py", "tests/test_dpop_http.py", "tests/test_pinned.py"],
    "mcp": ["tests/test_mcp.py"],
}

_FLIPS: dict[type, type] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}


@dataclass(frozen=True)
class Mutant:
    module: str
    index: int  # the index-th mutable node of the module, in walk order
    line: int
    change: str


def mutation_points(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    """Every node a mutation applies to, with what the mutation does."""
    points: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _FLIPS:
            flipped = _FLIPS[type(node.ops[0])].__name__
            points.append((node, f"{type(node.ops[0]).__name__} -> {flipped}"))
        elif isinstance(node, ast.BoolOp):
            points.append((node, "and <-> or"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            points.append((node, "not dropped"))
        elif isinstance(node, ast.Raise) and node.exc is not None:
            points.append((node, "raise -> pass"))
        elif (
            isinstance(node, ast.Constant)
            and type(node.value) in (int, float)
            and not isinstance(node.value, bool)
        ):
            points.append((node, f"{node.value!r} -> {node.value!r} + 1"))
        elif (
            isinstance(node, ast.Return)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, bool)
        ):
            points.append((node, f"return {node.value.value} inverted"))
    return points


def mutate(source: str, index: int) -> str:
    tree = ast.parse(source)
    node, _ = mutation_points(tree)[index]
    if isinstance(node, ast.Compare):
        node.ops[0] = _FLIPS[type(node.ops[0])]()
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, ast.UnaryOp):
        node.operand = ast.UnaryOp(ast.Not(), node.operand)  # not not x: the "not" undone
    elif isinstance(node, ast.Raise):
        node.__class__ = ast.Pass
        node.__dict__ = {"lineno": node.lineno, "col_offset": node.col_offset}
    elif isinstance(node, ast.Constant):
        node.value = node.value + 1
    elif isinstance(node, ast.Return):
        node.value = ast.Constant(not node.value.value)  # type: ignore[union-attr]
    return ast.unparse(ast.fix_missing_locations(tree))


def run_mutant(mutant: Mutant, timeout: float) -> bool:
    """True when the tests kill it."""
    source = (SRC / f"{mutant.module}.py").read_text()
    with tempfile.TemporaryDirectory(prefix="mutant-") as work:
        copy_root = Path(work) / "src"
        shutil.copytree(ROOT / "src", copy_root)
        (copy_root / "bearerguard" / f"{mutant.module}.py").write_text(mutate(source, mutant.index))
        env = {**os.environ, "PYTHONPATH": str(copy_root), "PYTHONDONTWRITEBYTECODE": "1"}
        command = [PYTHON, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--timeout", "60"]
        try:
            result = subprocess.run(
                [*command, *TESTS[mutant.module]],
                cwd=ROOT,
                env=env,
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return True
    return result.returncode != 0


def mutants_of(module: str) -> list[Mutant]:
    tree = ast.parse((SRC / f"{module}.py").read_text())
    return [
        Mutant(module, i, getattr(node, "lineno", 0), change)
        for i, (node, change) in enumerate(mutation_points(tree))
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", default=",".join(TESTS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="at most this many per module")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant")
    args = parser.parse_args()
    mutants: list[Mutant] = []
    for module in args.modules.split(","):
        found = mutants_of(module)
        mutants += found[: args.limit] if args.limit else found
    started = time.monotonic()
    killed: dict[str, int] = {}
    total: dict[str, int] = {}
    survivors: list[Mutant] = []
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
        futures = {pool.submit(run_mutant, m, args.timeout): m for m in mutants}
        for future in concurrent.futures.as_completed(futures):
            mutant = futures[future]
            total[mutant.module] = total.get(mutant.module, 0) + 1
            if future.result():
                killed[mutant.module] = killed.get(mutant.module, 0) + 1
            else:
                survivors.append(mutant)
    seconds = time.monotonic() - started
    print(f"mutate: {len(mutants)} mutants in {seconds:.0f} s on {args.workers} workers")
    print("| module | mutants | killed | ratio |")
    print("|---|---|---|---|")
    for module in total:
        k = killed.get(module, 0)
        print(f"| {module} | {total[module]} | {k} | {k / total[module]:.1%} |")
    all_killed = sum(killed.values())
    print(f"| all | {len(mutants)} | {all_killed} | {all_killed / max(len(mutants), 1):.1%} |")
    for mutant in sorted(survivors, key=lambda m: (m.module, m.line)):
        print(f"survivor: {mutant.module}.py:{mutant.line}: {mutant.change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
