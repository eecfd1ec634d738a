"""KERBEROS interop with the JDK's own SASL GSSAPI client, the closest thing to a real Nimbus:
`java/PacemakerGssapiClient.java` (a Krb5LoginModule keytab login from a `PacemakerClient` JAAS
section, then javax.security.sasl with Storm's parameters, frames written by hand) against a
node with `pacemaker.auth.method: KERBEROS` on a throwaway MIT realm (Debian's krb5-kdc).
`nimbus` reads the exact bytes a worker wrote, with and without mutual authentication (Storm
asks for none); `alice` is refused, and the node keeps serving everyone else."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from pmcluster.errors import NotAuthorized
from pmcluster.node.app import make_app
from pmcluster.node.sharedport import SharedSite
from pmcluster.node.stormfront import storm_factory
from pmcluster.storm.client import StormClient
from pmcluster.storm.metrics import StormMetrics
from pmcluster.testing.kdc import PacemakerRealm, pacemaker_realm

pytestmark = pytest.mark.integration

CLIENT = Path(__file__).with_name("java") / "PacemakerGssapiClient.java"
HOST = "127.0.0.1"
PATH = "/workerbeats/topo-1-1/9c1de2-127.0.0.1-6700"
BEAT = b"\x1f\x8b\x00beat"  # binary, as Storm's pulses are (gzipped Thrift)
WAIT = 5.0
JAVA_TIMEOUT = 60.0  # javac ~2 s, a run ~3 s (JVM start + keytab login); generous under load


def require(what: str | None) -> None:
    """Skip without `what` missing, but fail in CI: there a missing tool is a broken image."""
    if what is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the JDK GSSAPI interop test needs {what}")
        pytest.skip(f"the JDK GSSAPI interop test needs {what}")


def tool(name: str) -> str:
    found = shutil.which(name)
    require(None if found else f"{name} (Java 17 JDK)")
    assert found is not None
    return found


@pytest.fixture
def classes(tmp_path: Path) -> Path:
    """javac once: each `java File.java` run would compile the client again."""
    out = tmp_path / "classes"
    subprocess.run(
        [tool("javac"), "-d", str(out), str(CLIENT)],
        check=True,
        capture_output=True,
        timeout=JAVA_TIMEOUT,
    )
    return out


@pytest.fixture
def realm(kdc_tools: None, tmp_path: Path) -> Iterator[PacemakerRealm]:
    workdir = tmp_path / "krb"
    workdir.mkdir()
    users = ("nimbus", "alice")
    with pacemaker_realm(workdir, [HOST], users, ccache="MEMORY:pmcluster-java-gssapi") as realm:
        yield realm


@dataclasses.dataclass
class Node:
    port: int
    metrics: StormMetrics

    def client(self) -> StormClient:
        return StormClient(HOST, self.port, timeout=WAIT)


@pytest.fixture
async def node(realm: PacemakerRealm) -> AsyncIterator[Node]:
    """A node in this process serving the Storm protocol on its shared port."""
    app = make_app(realm.node_config(port=0, host=HOST))
    factory = storm_factory(app)
    metrics = factory().metrics  # the front end's shared counters (this probe never connects)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = SharedSite(runner, HOST, 0, factory, drain_timeout=1.0)
        await site.start()
        assert site.shared is not None
        yield Node(site.shared.port, metrics)
    finally:
        await runner.cleanup()


async def run_clients(
    classes: Path, realm: PacemakerRealm, port: int, runs: list[tuple[str, bool]]
) -> list[list[str]]:
    """Run one Java client per (principal, server_auth) at once; each one's output lines."""
    java = tool("java")
    procs: list[asyncio.subprocess.Process] = []
    try:
        for who, server_auth in runs:
            procs.append(
                await asyncio.create_subprocess_exec(
                    java,
                    f"-Djava.security.auth.login.config={realm.client_jaas(who)}",
                    f"-Djava.security.krb5.conf={realm.kdc.env['KRB5_CONFIG']}",
                    "-cp",
                    str(classes),
                    CLIENT.stem,
                    HOST,
                    str(port),
                    "pacemaker",
                    PATH,
                    str(server_auth).lower(),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
        results = await asyncio.wait_for(
            asyncio.gather(*(proc.communicate() for proc in procs)), JAVA_TIMEOUT
        )
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    outputs = []
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
        outputs.append(out.decode().splitlines())
    return outputs


async def test_jdk_gssapi_client(classes: Path, realm: PacemakerRealm, node: Node) -> None:
    async with node.client() as worker:  # Storm's workers: no authentication, writes open
        await worker.send_pulse(PATH, BEAT)
        with pytest.raises(NotAuthorized):
            await worker.get_pulse(PATH)

    async with node.client() as bystander:  # open throughout, used again afterwards
        await bystander.send_pulse(PATH + "-b", b"before")
        storm_like, mutual, alice = await run_clients(
            classes, realm, node.port, [("nimbus", False), ("nimbus", True), ("alice", False)]
        )
        read = ["AUTH OK qop=auth", f"PULSE {BEAT.hex()}"]
        assert storm_like == [f"LOGIN {realm.principal('nimbus')}", *read]
        assert mutual == [f"LOGIN {realm.principal('nimbus')}", *read]
        # Refused: the node closes the connection, nothing is read.
        assert alice == [f"LOGIN {realm.principal('alice')}", "AUTH CLOSED"]
        assert (node.metrics.auth_ok, node.metrics.auth_failed) == (2, 1)

        # Everyone else is still served: the open connection writes, a new nimbus reads.
        await bystander.send_pulse(PATH + "-b", b"after")
    nimbus = node.client()
    await nimbus.connect()
    try:
        await nimbus.authenticate_gssapi(
            "pacemaker", keytab=realm.keytab("nimbus"), principal=realm.principal("nimbus")
        )
        assert await nimbus.get_all_pulse_for_path("/workerbeats/topo-1-1") == [
            (PATH, BEAT),
            (PATH + "-b", b"after"),
        ]
    finally:
        await nimbus.close()
    assert (node.metrics.auth_ok, node.metrics.auth_failed) == (3, 1)
