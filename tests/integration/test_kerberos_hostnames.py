"""Kerberos with host names (issue 17, item 9): a node whose principal names its host
(`pacemaker/localhost@REALM`), seeds given by name (`pacemaker.servers: [localhost:PORT]`), and
pmcluster's own client reads through it with the `PacemakerClient` keytab. Members are
addressed by IP; the ticket must still be for the name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pmcluster.client import SyncClusterClient
from pmcluster.config import config_from_mapping
from pmcluster.testing.kdc import pacemaker_realm
from pmcluster.tools.localcluster import NodeProcess, free_port

pytestmark = pytest.mark.integration


def test_client_asks_for_the_host_names_principal(kdc_tools: None, tmp_path: Path) -> None:
    with pacemaker_realm(tmp_path, ("localhost",), ("nimbus",), ccache="MEMORY:hostnames") as realm:
        server_jaas = tmp_path / "named.jaas"
        server_jaas.write_text(
            "PacemakerServer {\n  com.sun.security.auth.module.Krb5LoginModule required\n"
            f'  useKeyTab=true keyTab="{tmp_path / "server.keytab"}" storeKey=true\n'
            f'  principal="pacemaker/localhost@{realm.kdc.realm}";\n}};\n'
        )
        port = free_port("127.0.0.1")
        keys = {
            "pacemaker.auth.method": "KERBEROS",
            "nimbus.daemon.user": "nimbus",
            "pmcluster.auth.secret.file": str(realm.secret),
            "pacemaker.port": port,
            "pmcluster.request.timeout.secs": 2.0,
        }
        node_keys = {
            **keys,
            "pacemaker.host": "127.0.0.1",
            "pacemaker.servers": [f"127.0.0.1:{port}"],
            "java.security.auth.login.config": str(server_jaas),
        }
        env = {**os.environ, **realm.kdc.env, "KRB5CCNAME": "MEMORY:node"}
        with NodeProcess(node_keys, workdir=tmp_path, env=env):
            reader = config_from_mapping(
                {
                    **keys,
                    "pacemaker.servers": [f"localhost:{port}"],
                    "java.security.auth.login.config": str(realm.client_jaas("nimbus")),
                }
            )
            with SyncClusterClient(reader) as client:
                client.send_pulse("/workerbeats/named/w1", b"beat")
                got = client.get_pulse("/workerbeats/named/w1")
                assert got is not None and got.data == b"beat"
