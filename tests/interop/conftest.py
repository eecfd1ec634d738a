"""Storm's own jars for the interop tests: Maven's classpath (once per session; the jars are
cached in ~/.m2, fetched there by `scripts/setup`) and the Storm drivers (`java/StormDriver.java`,
`java/TopologyDriver.java`) compiled against it.

A missing JDK or Maven is a failure, never a skip: `scripts/setup` installs both."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pmcluster.tools.stormpacemaker import StormUnavailable, storm_classpath

HERE = Path(__file__).parent
POM = HERE / "storm" / "pom.xml"
DRIVERS = (HERE / "java" / "StormDriver.java", HERE / "java" / "TopologyDriver.java")
JAVAC_TIMEOUT = 120.0


def require(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not installed: run ./scripts/setup (installs a JDK 17 and Maven)")
    return found


def storm_java_command(work: Path) -> list[str]:
    """`java -cp <storm-client's and storm-server's jars and the compiled drivers>`: Maven
    resolves the jars, javac compiles the drivers into `work` against them."""
    try:
        jars = storm_classpath(work, POM)
    except StormUnavailable as exc:
        pytest.fail(str(exc))
    classes = work / "classes"
    javac = subprocess.run(
        [require("javac"), "-cp", jars, "-d", str(classes), *map(str, DRIVERS)],
        capture_output=True,
        text=True,
        timeout=JAVAC_TIMEOUT,
    )
    assert javac.returncode == 0, javac.stderr
    return [require("java"), "-cp", f"{jars}:{classes}"]


@pytest.fixture(scope="session")
def storm_java(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The Storm drivers' java command (`storm_java_command`), built once per session."""
    return storm_java_command(tmp_path_factory.mktemp("storm-java"))
