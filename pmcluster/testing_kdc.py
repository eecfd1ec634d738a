"""A throwaway Kerberos realm for tests: MIT krb5kdc from Debian's krb5-kdc, via k5test.

`KerberosRealm` pins the KDC to 127.0.0.1 on a probed free port (krb5kdc binds with
SO_REUSEPORT, so two realms on one port would both start and then fail at random; the probe
binds without it and so sees any KDC already there). krb5.conf turns off reverse DNS and
host-name canonicalisation, so `service@127.0.0.1` maps to `service/127.0.0.1@REALM`, and
keeps the replay cache on. The KDC is stopped by PID (k5test's own process handle).

`env` is what a process needs to use the realm (`KRB5_CONFIG`, a private `KRB5CCNAME`, ...);
`apply_env()` installs it in this process for in-process clients and servers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pmcluster.testing import HarnessError, free_port

__all__ = ["KDC_TOOLS", "KerberosRealm", "missing_kdc_tools"]

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
