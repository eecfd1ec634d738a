"""DIGEST interop with the JDK's own SASL DIGEST-MD5 client, the closest thing to a real Nimbus:
`java/PacemakerDigestClient.java` (javax.security.sasl with Storm's parameters, frames written
by hand) against a real node process with `pacemaker.auth.method: DIGEST`. The right password
reads; a wrong one is refused and the node keeps serving everyone else."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from pmcluster.errors import NotAuthorized
from pmcluster.storm.client import StormClient
from pmcluster.tools.localcluster import NodeProcess, free_port

pytestmark = pytest.mark.integration

CLIENT = Path(__file__).with_name("java") / "PacemakerDigestClient.java"
JAAS = """\
// Storm's documented form: no module, no flag
PacemakerDigest {
    username="storm"
    password="s3cret-pw";
};
"""
PATH = "/workerbeats/topo-1-1/9c1de2-127.0.0.1-6700"
JAVA_TIMEOUT = 60.0  # javac ~1 s, a run ~0.3 s; generous for a loaded machine


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} not installed (Java 17 JDK)")
        pytest.skip(f"{name} not installed (Java 17 JDK)")
    return found


def compile_client(out: Path) -> None:
    """javac once: three `java File.java` runs would each compile it again."""
    subprocess.run(
        [tool("javac"), "-d", str(out), str(CLIENT)],
        check=True,
        capture_output=True,
        timeout=JAVA_TIMEOUT,
    )


def run_clients(classes: Path, port: int, credentials: list[tuple[str, str]]) -> list[list[str]]:
    """Run one Java client per (user, password) at once; each one's output lines."""
    main = [tool("java"), "-cp", str(classes), CLIENT.stem, "127.0.0.1", str(port), "topo-1"]
    procs = [
        subprocess.Popen(
            [*main, user, password, PATH],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for user, password in credentials
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=JAVA_TIMEOUT)
            assert proc.returncode == 0, err
            outputs.append(out.splitlines())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def test_jdk_digest_client(tmp_path: Path) -> None:
    classes = tmp_path / "classes"
    compile_client(classes)
    jaas = tmp_path / "jaas.conf"
    jaas.write_text(JAAS)
    config = {
        "pacemaker.host": "127.0.0.1",
        "pacemaker.port": free_port(),
        "pacemaker.auth.method": "DIGEST",
        "java.security.auth.login.config": str(jaas),
    }
    with NodeProcess(config, workdir=tmp_path) as node:

        async def write_then_read_anonymously() -> None:
            async with StormClient(node.host, node.port, timeout=5) as worker:
                await worker.send_pulse(PATH, b"\x1f\x8bbeat")  # workers connect with NONE
                with pytest.raises(NotAuthorized):
                    await worker.get_pulse(PATH)

        asyncio.run(write_then_read_anonymously())

        right, wrong, other_user = run_clients(
            classes,
            node.port,
            [("storm", "s3cret-pw"), ("storm", "wrong"), ("someone", "s3cret-pw")],
        )
        assert right == ["AUTH OK", "PULSE 1f8b62656174"]
        assert wrong == ["AUTH CLOSED"]  # refused: the node closes the connection
        assert other_user == ["AUTH CLOSED"]  # the JAAS user name is part of the secret

        async def still_serving() -> None:
            async with StormClient(node.host, node.port, timeout=5) as nimbus:
                await nimbus.authenticate_digest("nimbus", "storm", "s3cret-pw")
                assert await nimbus.get_pulse(PATH) == b"\x1f\x8bbeat"

        asyncio.run(still_serving())
        node.check_alive()
        with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert "pmcluster_storm_auth_total 2" in text
        assert 'pmcluster_storm_errors_total{kind="auth_failed"} 2' in text
