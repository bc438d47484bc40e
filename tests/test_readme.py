"""The README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
DJANGO = "# tests/test_django.py runs this block"
EXAMPLES = [b for b in BLOCKS if "def test_" not in b and DJANGO not in b]
TESTS = [b for b in BLOCKS if "def test_" in b]


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 5
    assert len(TESTS) == 1


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"block{i}" for i in range(len(EXAMPLES))])
def test_example_runs(code: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})  # noqa: S102


def test_core_example_prints_the_insufficient_scope_body(
    capsys: pytest.CaptureFixture[str],
) -> None:
    exec(compile(EXAMPLES[0], str(README), "exec"), {"__name__": "readme_example"})  # noqa: S102
    assert '"error": "insufficient_scope"' in capsys.readouterr().out


def test_logto_example_refuses_the_issuer_form_and_an_opaque_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Both ``except`` branches of the Logto set-up example run: neither call may succeed."""
    (code,) = [b for b in EXAMPLES if "G-HMSESWae8UFLUliq7KsLe5c2mGLyp6E8r3IKCaNis" in b]
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})  # noqa: S102
    out = capsys.readouterr().out
    assert "takes the tenant endpoint" in out
    assert "not the issuer" in out
    assert '"error": "invalid_token"' in out


def test_pytest_plugin_example_passes(tmp_path: Path) -> None:
    """The user's test in the README passes under pytest, with the plugin found by entry point."""
    (tmp_path / "test_user_api.py").write_text(TESTS[0], encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
