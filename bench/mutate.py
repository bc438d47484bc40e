"""``make mutate``: mutation testing of the decision modules, with a small harness of our own.

    .venv/bin/python bench/mutate.py [--modules verify,rules,...] [--workers 2] [--limit N]

Each mutant changes one thing in one module's source: a comparison flipped, a boolean operator
swapped, a ``not`` dropped, a numeric constant moved by one, a ``raise`` turned into ``pass``,
a returned ``True``/``False`` inverted. A mutant is killed when a test fails (or the run times
out) with the mutated module first on the path.

Two things keep a run of every point of every module within minutes on two cores:

- **Coverage picks the tests.** One run of the test pool under coverage.py, with each test in
  its own context, maps every line of ``src/bearerguard`` to the tests that execute it (and
  times each test). A mutant runs only the tests covering its lines, fastest first, and stops
  at the first failure. A mutant on a line run only at import (a module constant, a default
  argument) runs the tests covering the lines that use that name, or the body of that function.
  A mutant no test covers survives without a run.
- **A fork per mutant.** The parent imports pytest and the heavy dependencies once (never
  bearerguard); each mutant is a forked child that puts its mutated copy of ``src/`` first on
  ``sys.path`` (and ``PYTHONPATH``, for the subprocesses some tests start) and runs pytest.

Prints the kill ratio per module, every survivor (module, line, what changed, the source line)
and the time taken. Survivors are the list to judge: a test that notices, or an equivalent
mutant named with why in bench/README.md. Exit status 0 always: the number is the report.
``MUTATE_DEBUG=1`` prints each mutant as it ends: its tests, its time, pytest's exit code.
"""

from __future__ import annotations

import argparse
import ast
import gc
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "bearerguard"
PYTHON = str(ROOT / ".venv" / "bin" / "python")

# The decision modules (issue 17): the core, the new protocol modules, the MCP guard and the
# Django adapter.
MODULES = [
    "verify",
    "keys",
    "rules",
    "bearer",
    "server",
    "errors",
    "dpop",
    "replay",
    "mcp",
    "django/conf",
    "django/middleware",
    "django/views",
    "django/drf",
]

# The test pool coverage draws from: every in-process test. Left out: the examples under their
# real servers and the interop suite (their bearerguard runs in subprocesses coverage does not
# see), and the long random slice of the mutation fuzzer (``make fuzz`` is its place).
EXCLUDED = ["tests/test_examples.py", "tests/interop", "tests/test_mutfuzz.py"]

# Imported by the parent once so each forked child starts warm. Never bearerguard.
WARM = [
    "pytest",
    "_pytest.python",
    "hypothesis",
    "anyio",
    "httpx",
    "jwt",
    "cryptography.hazmat.primitives.asymmetric.ec",
    "cryptography.hazmat.primitives.asymmetric.rsa",
    "starlette.applications",
    "starlette.testclient",
    "fastapi",
    "flask",
    "werkzeug.test",
    "django",
    "django.test",
    "rest_framework",
    "redis",
    "prometheus_client",
    "opentelemetry.sdk.metrics",
    "mcp",
    "mcp.server.mcpserver",
    "fastmcp",
    "cachetools",
]

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
    end_line: int
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
    _apply(node)
    return ast.unparse(ast.fix_missing_locations(tree))


def _apply(node: ast.AST) -> None:
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


def mutants_of(module: str) -> list[Mutant]:
    """Each mutation point of ``module``. The same change to the same source text a second
    time in the module (on one line or another) is named ``#2``, so a name is unique."""
    source = (SRC / f"{module}.py").read_text()
    texts = source.splitlines()
    tree = ast.parse(source)
    seen: dict[tuple[str, str], int] = {}
    mutants = []
    for i, (node, change) in enumerate(mutation_points(tree)):
        line = getattr(node, "lineno", 0)
        text = texts[line - 1].strip()
        count = seen[text, change] = seen.get((text, change), 0) + 1
        named = change if count == 1 else f"{change} #{count}"
        mutants.append(Mutant(module, i, line, getattr(node, "end_lineno", line), named))
    return mutants


# -- the coverage map ---------------------------------------------------------------------------


class _PerTest:
    """A pytest plugin: each test runs in its own coverage context; durations are kept."""

    def __init__(self, cov: Any) -> None:
        self.cov = cov
        self.durations: dict[str, float] = {}
        self.failed: set[str] = set()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> Any:
        self.cov.switch_context(item.nodeid)
        started = time.perf_counter()
        try:
            return (yield)
        finally:
            self.durations[item.nodeid] = time.perf_counter() - started
            self.cov.switch_context("")

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed:
            self.failed.add(report.nodeid)


def pool_files(part: int, parts: int) -> list[str]:
    """The test files of the pool, dealt to ``parts`` processes (largest first, in turn)."""
    files = [
        path
        for path in (ROOT / "tests").glob("test_*.py")
        if not any(path.relative_to(ROOT).as_posix().startswith(ex) for ex in EXCLUDED)
    ]
    files.sort(key=lambda path: (-path.stat().st_size, path.name))
    return [path.relative_to(ROOT).as_posix() for path in files[part::parts]]


def build_map(out: Path, part: int, parts: int) -> None:
    """Run one part of the pool under coverage (in this process); write its map to ``out``."""
    import coverage

    cov = coverage.Coverage(data_file=None, source=[str(SRC)], config_file=False)
    plugin = _PerTest(cov)
    cov.start()
    pytest.main(
        ["-q", "-p", "no:cacheprovider", "-o", "addopts=", *pool_files(part, parts)],
        plugins=[plugin],
    )
    cov.stop()
    data = cov.get_data()
    lines: dict[str, dict[int, list[str]]] = {}
    for filename in data.measured_files():
        path = Path(filename).resolve()
        if SRC not in path.parents:
            continue
        module = path.relative_to(SRC).with_suffix("").as_posix()
        by_line = data.contexts_by_lineno(filename)
        lines[module] = {n: sorted(c for c in ctx if c) for n, ctx in by_line.items()}
    payload = {"lines": lines, "durations": plugin.durations, "failed": sorted(plugin.failed)}
    out.write_text(json.dumps(payload))


# Each module's own test files: every covering test in them runs. Other covering tests run
# fastest first up to OTHERS_SECONDS of their measured time (a hot line such as a status code is
# covered by 700 tests and a minute of them; the last minute rarely kills what the first
# seconds did not, and the kill ratio can only be understated by the cap).
OWNERS: dict[str, list[str]] = {
    "verify": ["test_advisories", "test_hostile", "test_reasons", "test_pinned", "test_claims"],
    "keys": ["test_cache", "test_recovery", "test_faults", "test_http", "test_warmup"],
    "rules": ["test_rules", "test_paths", "test_parity", "test_pinned"],
    "bearer": ["test_bearer", "test_reasons", "test_pinned", "test_hostile"],
    "server": ["test_config", "test_observe", "test_reasons", "test_pinned", "test_dpop"],
    "errors": ["test_errors", "test_reasons", "test_pinned", "test_metadata"],
    "dpop": ["test_dpop", "test_dpop_client", "test_dpop_http", "test_reasons", "test_pinned"],
    "replay": ["test_dpop", "test_dpop_http", "test_pinned"],
    "mcp": ["test_mcp"],
    "django/conf": ["test_django"],
    "django/middleware": ["test_django"],
    "django/views": ["test_django"],
    "django/drf": ["test_django"],
}
OTHERS_SECONDS = 5.0


@dataclass
class CoverageMap:
    lines: dict[str, dict[int, set[str]]]
    durations: dict[str, float]

    def tests_for(self, mutant: Mutant, tree: ast.Module) -> list[str]:
        covered = self.lines.get(mutant.module, {})
        found: set[str] = set()
        for line in range(mutant.line, mutant.end_line + 1):
            found |= covered.get(line, set())
        if not found or enclosing_function(tree, mutant.line) is None:
            # Run at import (a test re-importing the module covers it too): the tests of
            # where the value is used.
            for line in _uses(tree, mutant.line):
                found |= covered.get(line, set())
        owners = {f"tests/{name}.py" for name in OWNERS.get(mutant.module, [])}
        ordered = sorted(found, key=lambda test: (self.durations.get(test, 0.0), test))
        chosen = [test for test in ordered if test.split("::")[0] in owners]
        spent = 0.0
        for test in ordered:
            if test.split("::")[0] not in owners and spent < OTHERS_SECONDS:
                chosen.append(test)
                spent += self.durations.get(test, 0.0)
        return sorted(chosen, key=lambda test: (self.durations.get(test, 0.0), test))

    def seconds(self, tests: Iterable[str]) -> float:
        return sum(self.durations.get(test, 0.0) for test in tests)


class FixedTests(CoverageMap):
    """``--tests``: the same test paths for every mutant (a quick check of new tests)."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__({}, {})
        self.paths = paths

    def tests_for(self, mutant: Mutant, tree: ast.Module) -> list[str]:
        return self.paths

    def seconds(self, tests: Iterable[str]) -> float:
        return 60.0


def load_map(modules: list[str], reuse: Path | None, parts: int) -> tuple[CoverageMap, float]:
    """The coverage map: read from ``reuse`` when it exists, else built by ``parts`` processes
    side by side (and kept in ``reuse`` when given)."""
    started = time.monotonic()
    if reuse is not None and reuse.exists():
        payload = json.loads(reuse.read_text())
    else:
        payload = {"lines": {}, "durations": {}, "failed": []}
        with tempfile.TemporaryDirectory(prefix="mutate-map-") as work:
            outs = [Path(work) / f"map{part}.json" for part in range(parts)]
            runs = [
                subprocess.Popen(
                    [PYTHON, __file__, "--build-map", str(out), "--part", f"{part}/{parts}"],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                )
                for part, out in enumerate(outs)
            ]
            for run in runs:
                if run.wait() not in (0, 1):  # 1: some test failed; it is left out below
                    raise SystemExit(f"mutate: the coverage run failed ({run.returncode})")
            for out in outs:
                part_map = json.loads(out.read_text())
                for module, by_line in part_map["lines"].items():
                    merged = payload["lines"].setdefault(module, {})
                    for n, tests in by_line.items():
                        merged[n] = merged.get(n, []) + tests
                payload["durations"].update(part_map["durations"])
                payload["failed"] += part_map["failed"]
        if reuse is not None:
            reuse.write_text(json.dumps(payload))
    failed = set(payload["failed"])
    if failed:
        print(f"mutate: {len(failed)} tests fail unmutated and are left out: {sorted(failed)}")
    lines = {
        module: {int(n): set(tests) - failed for n, tests in by_line.items()}
        for module, by_line in payload["lines"].items()
        if module in modules
    }
    return CoverageMap(lines, payload["durations"]), time.monotonic() - started


def _uses(tree: ast.Module, line: int) -> set[int]:
    """For a line run only at import: the lines that give it effect at run time.

    A default argument: the body of its function. A module or class constant: every line that
    reads the name it is bound to (as a name or an attribute), and where that read is itself a
    default argument, the body of that function."""
    body = _function_body(tree, line)
    if body:
        return body
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.lineno <= line <= (
            node.end_lineno or line
        ):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    uses: set[int] = set()
    for node in ast.walk(tree):
        read = (isinstance(node, ast.Name) and node.id in names) or (
            isinstance(node, ast.Attribute) and node.attr in names
        )
        if read and isinstance(getattr(node, "ctx", None), ast.Load):
            uses.add(node.lineno)
            uses |= _function_body(tree, node.lineno)
    return uses


def _function_body(tree: ast.Module, line: int) -> set[int]:
    """The body's lines of the function whose signature holds ``line`` (empty if none)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if node.lineno <= line < node.body[0].lineno:
            return set(range(node.body[0].lineno, (node.end_lineno or line) + 1))
    return set()


# -- running mutants ----------------------------------------------------------------------------


def enclosing_function(
    tree: ast.Module, line: int
) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The outermost function whose body holds ``line`` (None: the line runs at import)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if node.body[0].lineno <= line <= (node.end_lineno or line):
            return node
    return None


def _functions(module: Any) -> dict[tuple[str, int], Any]:
    """Every live function defined in ``module``, by (qualified name, first line)."""
    found: dict[tuple[str, int], Any] = {}
    seen: set[int] = set()

    def visit(value: Any) -> None:
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, staticmethod | classmethod):
            visit(value.__func__)
        elif isinstance(value, property):
            for part in (value.fget, value.fset, value.fdel):
                visit(part)
        elif isinstance(value, type) and value.__module__ == module.__name__:
            for member in vars(value).values():
                visit(member)
        elif hasattr(value, "__wrapped__"):
            visit(value.__wrapped__)
            if hasattr(value, "__code__"):
                visit_function(value)
        elif hasattr(value, "__code__") and getattr(value, "__module__", None) == module.__name__:
            visit_function(value)

    def visit_function(function: Any) -> None:
        code = function.__code__
        found[(code.co_qualname, code.co_firstlineno)] = function

    for value in list(vars(module).values()):
        visit(value)
    return found


def _code_objects(code: Any) -> Any:
    yield code
    for const in code.co_consts:
        if hasattr(const, "co_qualname"):
            yield from _code_objects(const)


def hot_patch(mutant: Mutant, source: str) -> bool:
    """Put the mutated function's code into the live function (in a forked child). False when
    the function cannot be found alive (then the mutant runs on a fresh import instead)."""
    tree = ast.parse(source)
    function = enclosing_function(tree, mutant.line)
    if function is None:
        return False
    name = "bearerguard." + mutant.module.replace("/", ".")
    module = sys.modules.get(name)
    if module is None:
        return False
    mutated_tree = ast.parse(source)
    node, _ = mutation_points(mutated_tree)[mutant.index]
    _apply(node)
    code = compile(ast.fix_missing_locations(mutated_tree), module.__file__, "exec")
    live = _functions(module)
    first_line = function.decorator_list[0].lineno if function.decorator_list else function.lineno
    for candidate in _code_objects(code):
        if candidate.co_firstlineno == first_line and candidate.co_name == function.name:
            target = live.get((candidate.co_qualname, first_line))
            if target is None or target.__code__.co_freevars != candidate.co_freevars:
                return False
            target.__code__ = candidate
            return True
    return False


def _child(mutant: Mutant, source: str, copy_root: Path, tests: list[str]) -> None:
    """In the forked child: the mutant in place, pytest on the chosen tests, exit with its code.

    Most mutants are patched into the live function objects the parent imported (the tests
    already hold them). One that runs at import, or whose function is not found alive, gets a
    fresh import: bearerguard and the test modules are dropped, the mutated copy goes first."""
    code = 3
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.environ["PYTHONPATH"] = str(copy_root)  # for the subprocesses some tests start
        if not hot_patch(mutant, source):
            tests_dir = str(ROOT / "tests")
            for name, module in list(sys.modules.items()):
                where = getattr(module, "__file__", None) or ""
                if name.split(".")[0] == "bearerguard" or where.startswith(tests_dir):
                    del sys.modules[name]
            sys.path.insert(0, str(copy_root))
        code = int(pytest.main([*CHILD_ARGS, *tests]))
    finally:
        os._exit(code)


# pytest's unraisable-exception plugin runs gc.collect() five times at exit: a quarter second a
# mutant, for warnings the oracle does not use.
CHILD_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:unraisableexception"]
CHILD_ARGS += ["-o", "addopts=", "--timeout", "60"]


def warm_up() -> None:
    """Import the dependencies, bearerguard and every test module once, before any fork."""
    for name in WARM:
        importlib.import_module(name)
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        pytest.main(["-q", "--collect-only", *CHILD_ARGS[2:6], *pool_files(0, 1)])
    finally:
        os.dup2(saved, 1)
    gc.freeze()  # the children never scan the parent's objects


@dataclass
class Running:
    mutant: Mutant
    pid: int
    deadline: float
    work: Path
    n: int
    started: float = field(default_factory=time.monotonic)


def run_all(
    mutants: list[Mutant], cmap: CoverageMap, trees: dict[str, ast.Module], workers: int
) -> dict[Mutant, str]:
    """Fork up to ``workers`` children at a time; each mutant ends killed, survived or uncovered."""
    outcome: dict[Mutant, str] = {}
    queue = list(mutants)
    running: dict[int, Running] = {}
    sources = {m: (SRC / f"{m}.py").read_text() for m in trees}
    while queue or running:
        while queue and len(running) < workers:
            mutant = queue.pop(0)
            tests = cmap.tests_for(mutant, trees[mutant.module])
            if not tests:
                outcome[mutant] = "uncovered"
                continue
            work = Path(tempfile.mkdtemp(prefix="mutant-"))
            copy_root = work / "src"
            shutil.copytree(ROOT / "src", copy_root)
            mutated = mutate(sources[mutant.module], mutant.index)
            (copy_root / "bearerguard" / f"{mutant.module}.py").write_text(mutated)
            budget = 30.0 + 3.0 * cmap.seconds(tests)
            pid = os.fork()
            if pid == 0:
                _child(mutant, sources[mutant.module], copy_root, tests)
            running[pid] = Running(mutant, pid, time.monotonic() + budget, work, len(tests))
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for run in list(running.values()):
                if now > run.deadline:
                    os.kill(run.pid, signal.SIGKILL)
                    os.waitpid(run.pid, 0)
                    outcome[run.mutant] = "killed (timeout)"
                    shutil.rmtree(run.work, ignore_errors=True)
                    del running[run.pid]
            time.sleep(0.005)
            continue
        run = running.pop(pid)
        shutil.rmtree(run.work, ignore_errors=True)
        code = os.waitstatus_to_exitcode(status)
        outcome[run.mutant] = "survived" if code == 0 else "killed"
        if os.environ.get("MUTATE_DEBUG"):
            took = time.monotonic() - run.started
            print(
                f"{run.mutant.module}:{run.mutant.line} {run.n} tests {took:.1f}s code {code}",
                file=sys.stderr,
            )
    return outcome


def source_line(module: str, line: int) -> str:
    return (SRC / f"{module}.py").read_text().splitlines()[line - 1].strip()


EQUIVALENTS = ROOT / "bench" / "README.md"
_JUDGED = re.compile(r"^- `(?P<module>[\w/]+)\.py` `(?P<change>[^`]+)` `(?P<source>[^`]+)`: ")


def judged_equivalent() -> set[tuple[str, str, str]]:
    """The survivors bench/README.md names as equivalent: (module, change, source line)."""
    found = set()
    for line in EQUIVALENTS.read_text().splitlines():
        match = _JUDGED.match(line)
        if match:
            found.add((match["module"], match["change"], match["source"]))
    return found


def key(mutant: Mutant) -> tuple[str, str, str]:
    return (mutant.module, mutant.change, source_line(mutant.module, mutant.line))


def report(mutants: list[Mutant], outcome: dict[Mutant, str], modules: list[str]) -> None:
    judged = judged_equivalent()
    equivalent = {m for m in mutants if key(m) in judged and not outcome[m].startswith("killed")}
    print(
        "| module | mutants | killed | equivalent | survived | not covered | killed of the rest |"
    )
    print("|---|---|---|---|---|---|---|")
    for module in [*modules, "all"]:
        mine = [m for m in mutants if module in (m.module, "all")]
        killed = sum(outcome[m].startswith("killed") for m in mine)
        same = sum(m in equivalent for m in mine)
        uncovered = sum(outcome[m] == "uncovered" and m not in equivalent for m in mine)
        survived = len(mine) - killed - same - uncovered
        ratio = killed / max(len(mine) - same, 1)
        counts = f"{len(mine)} | {killed} | {same} | {survived} | {uncovered}"
        print(f"| {module} | {counts} | {ratio:.1%} |")
    for mutant in sorted(mutants, key=lambda m: (m.module, m.line, m.index)):
        if outcome[mutant].startswith("killed") or mutant in equivalent:
            continue
        where = f"{mutant.module}.py:{mutant.line}"
        text = source_line(mutant.module, mutant.line)
        print(f"{outcome[mutant]}: {where}: `{mutant.change}` `{text}`")
    timeouts = sum(outcome[m] == "killed (timeout)" for m in mutants)
    print(f"killed by a timeout (an endless loop, or the run's budget overrun): {timeouts}")
    stale = judged & {key(m) for m in mutants if outcome[m].startswith("killed")}
    for module, change, text in sorted(stale):
        print(f"listed as equivalent but killed: {module}.py `{change}` `{text}`")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", default=",".join(MODULES))
    parser.add_argument("--only", default="", help="just these mutants: module:line,...")
    parser.add_argument(
        "--tests", default="", help="run these test paths for every mutant instead of the map"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="at most this many per module")
    parser.add_argument(
        "--map", type=Path, help="keep the coverage map in this file and reuse it when present"
    )
    parser.add_argument("--build-map", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--part", default="0/1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.build_map:
        part, parts = map(int, args.part.split("/"))
        build_map(args.build_map, part, parts)
        return 0
    only = {tuple(item.rsplit(":", 1)) for item in args.only.split(",") if item}
    modules = sorted({m for m, _ in only}, key=MODULES.index) if only else args.modules.split(",")
    started = time.monotonic()
    if args.tests:
        cmap: CoverageMap = FixedTests(args.tests.split(","))
    else:
        cmap, map_seconds = load_map(modules, args.map, args.workers)
        print(f"mutate: coverage map of the test pool in {map_seconds:.0f} s")
    warm_up()
    trees = {m: ast.parse((SRC / f"{m}.py").read_text()) for m in modules}
    mutants: list[Mutant] = []
    for module in modules:
        found = mutants_of(module)
        if only:
            found = [m for m in found if (module, str(m.line)) in only]
        mutants += found[: args.limit] if args.limit else found
    outcome = run_all(mutants, cmap, trees, args.workers)
    seconds = time.monotonic() - started
    print(f"mutate: {len(mutants)} mutants in {seconds:.0f} s on {args.workers} workers")
    report(mutants, outcome, modules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
