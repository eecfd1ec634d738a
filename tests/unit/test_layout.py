"""The package layout holds for users: every product module imports on a plain install, and
the data commands load no tool, harness or node module.

The layer rules themselves are import-linter contracts (pyproject.toml), run by scripts/test.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import pmcluster

REPO = Path(__file__).resolve().parents[2]


def product_modules() -> list[str]:
    """Every module under pmcluster except the test harness (`pmcluster.testing`)."""
    names = ["pmcluster"]
    for info in pkgutil.walk_packages(pmcluster.__path__, "pmcluster."):
        if info.name == "pmcluster.testing" or info.name.startswith("pmcluster.testing."):
            continue
        names.append(info.name)
    return names


def test_the_layout_has_its_layers_as_packages() -> None:
    names = set(product_modules())
    for package in ("protocol", "store", "membership", "auth", "client", "storm", "node"):
        assert f"pmcluster.{package}" in names
    for package in ("state", "tools"):
        assert f"pmcluster.{package}" in names
    # No module of the flat layout is left at the top (only faces and layer-1 modules).
    top = {n.split(".")[1] for n in names if n.count(".") == 1}
    assert top <= {
        "__main__", "auth", "cli", "client", "config", "errors", "membership", "node",
        "protocol", "ring", "state", "store", "storm", "tools",
    }, top  # fmt: skip


@pytest.mark.parametrize("command", [["get", "--help"], ["ls", "--help"], ["put", "--help"]])
def test_data_commands_import_no_tools_harness_or_node(command: list[str]) -> None:
    code = (
        "import sys, json, contextlib, io\n"
        "from pmcluster.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({command!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('pmcluster'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "pmcluster.cli" in loaded
    banned = [
        m
        for m in loaded
        if m.startswith(("pmcluster.tools", "pmcluster.testing", "pmcluster.node"))
    ]
    assert banned == [], banned


def test_a_tool_command_still_gets_its_own_options() -> None:
    from pmcluster.cli import build_parser

    args = build_parser("soak").parse_args(["soak", "--duration", "5", "--workers", "7"])
    assert (args.duration, args.workers) == (5.0, 7)
    with pytest.raises(SystemExit):
        build_parser("get").parse_args(["get", "/a", "--workers", "7"])


@pytest.mark.slow
def test_every_product_module_imports_on_a_plain_install(tmp_path: Path) -> None:
    """`pip install .` without extras (no dnslib, gssapi, k5test, pytest), then import all."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # `__main__` modules run their command when imported: `python -m pmcluster --version`
    # checks the main one.
    names = [n for n in product_modules() if not n.endswith(".__main__")]
    version = subprocess.run(
        [str(python), "-m", "pmcluster", "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.stdout.strip() == f"pmcluster {pmcluster.__version__}", version.stderr
    code = (
        "import importlib, json, sys\n"
        f"names = {names!r}\n"
        "failed = {}\n"
        "for name in names:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed[name] = repr(exc)\n"
        "print(json.dumps(failed))\n"
    )
    run = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {}
