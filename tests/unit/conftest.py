"""Unit-test fixtures: one real KDC (Debian's krb5-kdc, a throwaway realm on 127.0.0.1, via
`pmcluster.testing.kdc`) per session, for the tests of the Kerberos modules themselves
(`pmcluster.auth.kerberos`, `pmcluster.storm.sasl_gssapi`, the HTTP `KerberosGate`).

A realm starts in ≈ 70 ms warm, so mutation testing (a fresh pytest session per mutant) pays
that once per mutant. The KDC is stopped by its PID when the session ends; mutmut ends a mutant
that is over its time with SIGXCPU, which skips fixture teardown, so the realm also stops on
that signal before the process dies of it as it would have.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from types import FrameType

import pytest

from pmcluster.testing.kdc import KerberosRealm, PacemakerRealm, missing_kdc_tools, pacemaker_realm

KRB_HOST = "127.0.0.1"
KRB_USERS = ("nimbus", "alice", "bob")
# A service the KDC knows (it issues tickets for it) that is not in the node's keytab.
KRB_OTHER_SERVICE = "imposter"


@pytest.fixture(scope="session")
def krb_realm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacemakerRealm]:
    """`pacemaker/127.0.0.1` in the server keytab (JAAS `server_jaas`), a keytab for each of
    nimbus, alice and bob, and `imposter/127.0.0.1` known to the KDC only. Never skipped: a
    unit test that cannot run fails (`./scripts/setup` installs the KDC)."""
    missing = missing_kdc_tools()
    if missing is not None:
        pytest.fail(f"the Kerberos unit tests need {missing}: run ./scripts/setup")
    workdir = tmp_path_factory.mktemp("unit-krb")
    with pacemaker_realm(workdir, [KRB_HOST], KRB_USERS, ccache="MEMORY:pmcluster-unit") as realm:
        realm.kdc.add_principal(f"{KRB_OTHER_SERVICE}/{KRB_HOST}")
        previous = signal.signal(signal.SIGXCPU, _stop_then_die(realm.kdc))
        try:
            yield realm
        finally:
            signal.signal(signal.SIGXCPU, previous)


def _stop_then_die(kdc: KerberosRealm) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        kdc.stop()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    return handler


@pytest.fixture(scope="session")
def krb_other_service(krb_realm: PacemakerRealm) -> str:
    """The service name of `imposter/127.0.0.1`: known to the KDC, not in the node's keytab."""
    return KRB_OTHER_SERVICE
