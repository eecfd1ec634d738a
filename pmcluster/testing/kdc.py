"""A throwaway Kerberos realm for tests: MIT krb5kdc from Debian's krb5-kdc, via k5test.

`KerberosRealm` pins the KDC to 127.0.0.1 on a probed free port (krb5kdc binds with
SO_REUSEPORT, so two realms on one port would both start and then fail at random; the probe
binds without it and so sees any KDC already there). krb5.conf turns off reverse DNS and
host-name canonicalisation, so `service@127.0.0.1` maps to `service/127.0.0.1@REALM`, and
keeps the replay cache on. The KDC is stopped by PID (k5test's own process handle).

`env` is what a process needs to use the realm (`KRB5_CONFIG`, a private `KRB5CCNAME`, ...);
`apply_env()` installs it in this process for in-process clients and servers.
`pacemaker_realm()` sets up what pmcluster's Kerberos tests share: server keytab and JAAS,
user keytabs, a cluster secret, and the realm's environment for the block; its
`node_config()` is a KERBEROS node's configuration for that realm.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pmcluster.config import Config
from pmcluster.tools.localcluster import HarnessError, free_port

__all__ = ["KDC_TOOLS", "KerberosRealm", "PacemakerRealm", "missing_kdc_tools", "pacemaker_realm"]

KDC_TOOLS = ("/usr/sbin/krb5kdc", "/usr/sbin/kdb5_util", "/usr/sbin/kadmin.local", "/usr/bin/kinit")


def missing_kdc_tools() -> str | None:
    """What is missing to run a KDC here (tools or Python packages), or None."""
    for tool in KDC_TOOLS:
        if not os.access(tool, os.X_OK):
            return f"{tool} (apt-get install krb5-kdc krb5-admin-server krb5-user)"
    for module in ("k5test", "gssapi"):
        try:
            __import__(module)
        except ImportError:
            return f"Python package {module} (pip install -e '.[dev]')"
    if shutil.which("krb5-config") is None:
        return "krb5-config (apt-get install libkrb5-dev)"
    return None


class KerberosRealm:
    """A realm `PMCLUSTER.TEST` with a KDC on 127.0.0.1; principals and keytabs on demand."""

    def __init__(self, realm: str = "PMCLUSTER.TEST", *, attempts: int = 3) -> None:
        self.realm = realm
        self._attempts = attempts
        self._k5: Any = None

    @property
    def tmpdir(self) -> Path:
        return Path(self._k5.tmpdir)

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = dict(self._k5.env)
        return env

    @property
    def kdc_pid(self) -> int:
        pid: int = self._k5._kdc_proc.pid
        return pid

    def start(self) -> Self:
        from k5test import K5Realm

        last: Exception | None = None
        for _ in range(self._attempts):
            port = free_port("127.0.0.1")
            krb5_conf = {
                "libdefaults": {
                    "rdns": "false",
                    "dns_canonicalize_hostname": "false",
                    "dns_lookup_realm": "false",
                    "udp_preference_limit": "1",  # TCP: no lost datagrams under load
                },
                "realms": {"$realm": {"kdc": f"127.0.0.1:{port}"}},
            }
            kdc_conf = {
                "realms": {
                    "$realm": {
                        "kdc_listen": f"127.0.0.1:{port}",
                        "kdc_tcp_listen": f"127.0.0.1:{port}",
                        "kdc_ports": str(port),
                        "kdc_tcp_ports": str(port),
                    }
                }
            }
            try:
                self._k5 = K5Realm(
                    realm=self.realm,
                    portbase=port,
                    krb5_conf=krb5_conf,
                    kdc_conf=kdc_conf,
                    create_host=False,
                    get_creds=True,  # kinit of the default user: proves the KDC answers
                )
                return self
            except Exception as exc:  # k5test raises bare Exception when a daemon fails
                last = exc
                if self._k5 is not None:
                    self._k5.stop()
                    self._k5 = None
        raise HarnessError(f"cannot start a KDC on 127.0.0.1: {last}")

    def stop(self) -> None:
        """Stop the KDC (by its PID) and remove the realm's files."""
        if self._k5 is not None:
            self._k5.stop()
            self._k5 = None

    def add_principal(self, principal: str, keytab: Path | None = None) -> Path | None:
        """Create `principal` (random key) and, with `keytab`, export its key there."""
        name = self.qualify(principal)
        self._k5.addprinc(name)
        if keytab is not None:
            self._k5.extract_keytab(name, str(keytab))
        return keytab

    def add_user(self, principal: str, password: str) -> str:
        name = self.qualify(principal)
        self._k5.addprinc(name, password)
        return name

    def kinit(self, principal: str, password: str, ccache: Path) -> None:
        self._k5.kinit(self.qualify(principal), password, flags=["-c", str(ccache)])

    def qualify(self, principal: str) -> str:
        return principal if "@" in principal else f"{principal}@{self.realm}"

    def apply_env(self) -> dict[str, str | None]:
        """Install the realm's environment here; returns the previous values for `restore_env`."""
        previous = {key: os.environ.get(key) for key in self.env}
        os.environ.update(self.env)
        return previous

    @staticmethod
    def restore_env(previous: dict[str, str | None]) -> None:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class PacemakerRealm:
    """A realm set up for pmcluster: `server_jaas` holds PacemakerServer (and, if asked,
    PacemakerClient); every user has `<dir>/<user>.keytab`; `secret` signs cookies."""

    kdc: KerberosRealm
    dir: Path
    server_jaas: Path
    secret: Path

    def keytab(self, who: str) -> str:
        return str(self.dir / f"{who}.keytab")

    def principal(self, who: str) -> str:
        return f"{who}@{self.kdc.realm}"

    def node_config(self, **changes: Any) -> Config:
        """A KERBEROS node of this realm: the server JAAS, the cluster secret, `nimbus` as
        nimbus.daemon.user; `changes` sets other `Config` fields (port, kerberos_users, ...)."""
        config = Config(
            auth_method="KERBEROS",
            jaas_path=str(self.server_jaas),
            nimbus_daemon_user="nimbus",
            auth_secret_file=str(self.secret),
        )
        return replace(config, **changes)

    def client_jaas(self, who: str) -> Path:
        """Storm's client side: section PacemakerClient, a keytab login, service `pacemaker`."""
        jaas = self.dir / f"{who}.jaas"
        jaas.write_text(_client_section(self.keytab(who), self.principal(who)))
        return jaas


def _client_section(keytab: str, principal: str) -> str:
    return (
        "PacemakerClient {\n  com.sun.security.auth.module.Krb5LoginModule required\n"
        f'  useKeyTab=true keyTab="{keytab}" storeKey=true doNotPrompt=true\n'
        f'  principal="{principal}" serviceName="pacemaker";\n}};\n'
    )


@contextlib.contextmanager
def pacemaker_realm(
    workdir: Path,
    hosts: Sequence[str],
    users: Sequence[str],
    *,
    ccache: str,
    server_client_user: str | None = None,
) -> Iterator[PacemakerRealm]:
    """A running realm with `pacemaker/<host>` for every host in one server keytab, a keytab
    per user, and the realm's environment (credential cache `ccache`, never the user's own
    tickets) installed in this process until the block ends. With `server_client_user`, the
    server JAAS also has a PacemakerClient section logging in as that user."""
    with KerberosRealm() as kdc:
        server_keytab = workdir / "server.keytab"
        for host in hosts:
            kdc.add_principal(f"pacemaker/{host}", server_keytab)
        for who in users:
            kdc.add_principal(who, workdir / f"{who}.keytab")
        realm = PacemakerRealm(kdc, workdir, workdir / "server.jaas", workdir / "cluster.secret")
        server = (
            "PacemakerServer {\n  com.sun.security.auth.module.Krb5LoginModule required\n"
            f'  useKeyTab=true keyTab="{server_keytab}" storeKey=true\n'
            f'  principal="pacemaker/_HOST@{kdc.realm}";\n}};\n'
        )
        if server_client_user is not None:
            user = server_client_user
            server += _client_section(realm.keytab(user), realm.principal(user))
        realm.server_jaas.write_text(server)
        realm.secret.write_bytes(os.urandom(32))
        previous = kdc.apply_env()
        previous.setdefault("KRB5CCNAME", os.environ.get("KRB5CCNAME"))
        os.environ["KRB5CCNAME"] = ccache
        try:
            yield realm
        finally:
            KerberosRealm.restore_env(previous)
