"""Storm's DIGEST secret derivation, taken from Storm's own code rather than restated:
`java/org/apache/storm/messaging/netty/StormDigestVectors.java` runs storm-client's
`ClientAuthUtils.makeDigestPayload` (section PacemakerDigest of a JAAS file) and
`SaslUtils.encodePassword` (what Storm's `SaslNettyClient` sends as the SASL password), and
`storm_digest_password` must give the same password for every vector. The classpath comes from
`vectors/pom.xml` through Maven."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pmcluster.storm.sasl_digest import storm_digest_password

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
SOURCE = (
    HERE / "java" / "org" / "apache" / "storm" / "messaging" / "netty" / "StormDigestVectors.java"
)
MAIN = "org.apache.storm.messaging.netty.StormDigestVectors"
TIMEOUT = 300.0  # Maven resolving storm-client on a cold cache; javac ~2 s
VECTORS = [
    ("storm", "s3cret"),
    ("nimbus", "correct horse battery staple"),
    ("a", ""),
    ("tøpology-ünïcode", "pässwörd €"),
    ("user:with:colons", "pw:with:colons"),
]


def tool(name: str) -> str:
    """The tool's path; a skip when missing (the conftest hook fails it under CI)."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed (scripts/setup installs the JDK and Maven)")
    return found


@pytest.fixture(scope="module")
def storm_classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    """storm-client's classpath (Maven) plus the compiled vector program."""
    out = tmp_path_factory.mktemp("vectors")
    cp_file = out / "cp.txt"
    subprocess.run(
        [tool("mvn"), "-q", "-B", "-f", str(HERE / "vectors" / "pom.xml"),
         "dependency:build-classpath", f"-Dmdep.outputFile={cp_file}"],
        check=True, capture_output=True, timeout=TIMEOUT,
    )  # fmt: skip
    classpath = cp_file.read_text().strip()
    classes = out / "classes"
    subprocess.run(
        [tool("javac"), "-encoding", "UTF-8", "-d", str(classes), "-cp", classpath, str(SOURCE)],
        check=True, capture_output=True, timeout=TIMEOUT,
    )  # fmt: skip
    return f"{classes}:{classpath}"


def storm_vector(classpath: str, folder: Path, user: str, password: str) -> tuple[str, str]:
    """(hex payload, SASL password) as Storm computes them from a PacemakerDigest section."""
    jaas = folder / "jaas.conf"
    jaas.write_text(
        "PacemakerDigest {\n  org.apache.storm.security.auth.digest.DigestLoginModule required\n"
        f'  username="{user}"\n  password="{password}";\n}};\n',
        encoding="utf-8",
    )
    run = subprocess.run(
        [tool("java"), "-Dfile.encoding=UTF-8", "-cp", classpath, MAIN, str(jaas), "topo-1"],
        check=True, capture_output=True, timeout=60, text=True, encoding="utf-8",
    )  # fmt: skip
    lines = [line for line in run.stdout.splitlines() if line]
    assert len(lines) == 3, run.stdout + run.stderr
    assert lines[0] != "null", run.stderr  # Storm could not read the section
    return lines[0], lines[1]


@pytest.mark.parametrize(("user", "password"), VECTORS)
def test_secret_derivation_matches_storms_own_code(
    storm_classpath: str, tmp_path: Path, user: str, password: str
) -> None:
    payload, sasl_password = storm_vector(storm_classpath, tmp_path, user, password)
    assert len(payload) == 128  # a hex SHA-512, as Storm logs it
    assert storm_digest_password(user, password) == sasl_password
