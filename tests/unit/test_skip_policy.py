"""The skip policy of tests/conftest.py: under CI a skip (in a test or at import) fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).parents[1] / "conftest.py"
SKIPPING = """
import pytest

def test_skips() -> None:
    pytest.skip("curl not installed")

def test_passes() -> None:
    pass
"""
MODULE_SKIP = 'import pytest\npytest.skip("no thriftpy2", allow_module_level=True)\n'


def _pytest(folder: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-c", os.devnull,
         "--rootdir", str(folder), str(folder)],
        capture_output=True, text=True, timeout=60, env=env, check=False, cwd=folder,
    )  # fmt: skip


@pytest.mark.parametrize("body", [SKIPPING, MODULE_SKIP], ids=["in-test", "at-import"])
def test_a_skip_fails_under_ci_and_is_listed_otherwise(tmp_path: Path, body: str) -> None:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(body)
    plain = _pytest(tmp_path, ci=False)
    assert plain.returncode in (0, 5), plain.stdout  # 5: nothing ran (the module skipped)
    assert "SKIPPED" in plain.stdout and "1 skipped" in plain.stdout
    under_ci = _pytest(tmp_path, ci=True)
    assert under_ci.returncode in (1, 2), under_ci.stdout  # 2: a collection error
    assert "skipped under CI" in under_ci.stdout
    assert "skipped" not in under_ci.stdout.splitlines()[-1]
