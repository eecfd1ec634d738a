"""Shared fixtures (one real ZooKeeper per session, a fresh chroot per test) and the skip
policy: with `CI` set, any skip is a failure (the README's setup installs everything the suite
needs, so a skip there means a test did not run that should have)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmcluster.testing.kdc import missing_kdc_tools
from pmcluster.tools.localcluster import ManagedZooKeeper, missing_zookeeper_jar


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None] | pytest.TestReport:
    """Under CI, a skipped test (setup or call) is reported as failed, with the skip's reason."""
    report: pytest.TestReport = yield
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (a skip is a failure there): {report.longrepr}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Iterator[None] | pytest.CollectReport:
    """Under CI, a module skipped at import (`pytest.skip(allow_module_level=True)`) fails."""
    report: pytest.CollectReport = yield
    if os.environ.get("CI") and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (a skip is a failure there): {report.longrepr}"
    return report


def require_zookeeper() -> None:
    """Skip when ZooKeeper is not installed, except in CI (CI=set), where that is a failure."""
    missing = missing_zookeeper_jar()
    if missing is None:
        return
    reason = f"ZooKeeper not installed ({missing} missing): run the README's setup step"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def zookeeper() -> Iterator[ManagedZooKeeper]:
    """A standalone ZooKeeper (tickTime 200 ms) on 127.0.0.1 for the whole session."""
    require_zookeeper()
    with ManagedZooKeeper(tick_ms=200) as zk:
        yield zk


@pytest.fixture
def zk_hosts(zookeeper: ManagedZooKeeper) -> str:
    """`127.0.0.1:PORT/t-<uuid>`: a chroot of the session's ZooKeeper that only this test uses."""
    return zookeeper.new_chroot("t-")


@pytest.fixture
def private_zookeeper(tmp_path: Path) -> Iterator[ManagedZooKeeper]:
    """A ZooKeeper of this test's own, for tests that stop, kill or restart the server."""
    require_zookeeper()
    with ManagedZooKeeper(tmp_path / "zk", tick_ms=200) as zk:
        yield zk


@pytest.fixture(scope="session")
def kdc_tools() -> None:
    """Skip when the KDC tools or gssapi are missing, except in CI (CI=set): there, fail."""
    missing = missing_kdc_tools()
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"Kerberos tests need {missing}")
    pytest.skip(f"Kerberos tests need {missing}")
