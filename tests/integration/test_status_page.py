"""The status page (`GET /`) in a real browser: Debian's headless Chromium driven by Playwright,
against real three-node clusters. Screenshots go to `test-artifacts/status-page/` (or
`$PMCLUSTER_ARTIFACTS/status-page/`); the test prints where."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from pmcluster.client import SyncClusterClient
from pmcluster.config import config_from_mapping
from pmcluster.ring import Member, Ring
from pmcluster.tools.localcluster import NodeCluster, zk_yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# RECIPES.md: without the background-networking flags Chromium keeps trying the closed network.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NODE_KEYS: dict[str, Any] = {
    "pmcluster.request.timeout.secs": 1.0,
    "pmcluster.connect.timeout.secs": 0.3,
    "storm.zookeeper.session.timeout": 1000,
    "pmcluster.log.level": "INFO",
}
# Workers per topology: distinct counts, so a swapped or merged row shows.
TOPOLOGIES = {"wordcount-1-1700000000": 7, "clicks(prod)-2-1700000001": 4, "etl-3-1700000002": 2}
DOWN_WITHIN_SECS = 5.0  # SIGKILL -> the page shows the node down


def artifacts_dir() -> Path:
    root = Path(os.environ.get("PMCLUSTER_ARTIFACTS", REPO / "test-artifacts"))
    path = root / "status-page"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless; missing, it is a failure (./scripts/setup installs it)."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed: run ./scripts/setup")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def wait_for_members(urls: list[str], count: int, timeout: float = 20.0) -> None:
    """Until every node's own view lists `count` members (ZooKeeper registration done)."""
    deadline = time.monotonic() + timeout
    while True:
        sizes = []
        for url in urls:
            with urllib.request.urlopen(f"{url}/v1/members", timeout=2) as response:
                sizes.append(len(json.load(response)["members"]))
        if all(size == count for size in sizes):
            return
        assert time.monotonic() < deadline, f"members per node {sizes}, wanted {count}"
        time.sleep(0.1)


def write_heartbeats(config_keys: dict[str, Any]) -> list[str]:
    paths = [
        f"/workerbeats/{topology}/node-{i}-10.0.0.{i}-6700"
        for topology, workers in TOPOLOGIES.items()
        for i in range(workers)
    ]
    with SyncClusterClient(config_from_mapping(config_keys)) as client:
        for path in paths:
            client.send_pulse(path, path.encode() * 10)
    return paths


def expected_held(cluster: NodeCluster, paths: list[str]) -> Counter[str]:
    """Keys each node holds, from the ring itself (R=2 owners per path), not from the nodes."""
    ring = Ring([Member.at(host, cluster.port) for host in cluster.hosts], "expected")
    return Counter(owner.node_id for path in paths for owner in ring.owners(path))


def page_refused(page: Page, url: str) -> bool:
    """Whether the browser was refused `url`: a 401 page, or (Chromium's answer when it has
    no credentials that work) a navigation ended with ERR_INVALID_AUTH_CREDENTIALS."""
    try:
        response = page.goto(url)
    except PlaywrightError as exc:
        return "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
    return response is not None and response.status == 401


def cell(page: Page, row: str, column: str) -> str:
    return page.locator(f"{row} td.{column}").inner_text()


def test_page_lists_members_and_counts_and_shows_a_killed_node_down(
    browser: Browser, zk_hosts: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = {**NODE_KEYS, **zk_yaml(zk_hosts)}
    with NodeCluster(3, workdir=tmp_path, zk_hosts=zk_hosts, extra=NODE_KEYS) as cluster:
        wait_for_members(cluster.urls, 3)
        paths = write_heartbeats({**keys, "pacemaker.port": cluster.port})
        held = expected_held(cluster, paths)
        assert sum(held.values()) == 2 * len(paths)

        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(f"{cluster.urls[1]}/")  # any node answers for the whole cluster
        for node in cluster.nodes:
            row = f'#members tr[data-node="{node.node_id}"]'
            expect(page.locator(row)).to_have_attribute("data-state", "up", timeout=10_000)
            expect(page.locator(f"{row} td.keys")).to_have_text(str(held[node.node_id]))
        assert page.locator("#members tbody tr").count() == 3
        for topology, workers in TOPOLOGIES.items():
            row = f'#topologies tr[data-topology="{topology}"]'
            assert cell(page, row, "workers") == str(workers)
            age = float(cell(page, row, "oldest").removesuffix(" s"))
            assert 0 <= age < 60
        expect(page.locator("#summary")).to_contain_text(f"3 of 3 members up · {len(paths)}")
        assert page.locator("#ring tbody tr").count() == 3
        shares = [
            float(t.removesuffix(" %")) for t in page.locator("#ring td.primary").all_inner_texts()
        ]
        assert abs(sum(shares) - 100) < 0.5
        # Anti-entropy runs on every member; a cluster whose writes all landed has no key
        # held at two versions.
        expect(page.locator("#under-replicated")).to_have_text("0")
        shots = artifacts_dir()
        page.screenshot(path=str(shots / "all-up.png"), full_page=True)

        victim = cluster[2]
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        row = f'#members tr[data-node="{victim.node_id}"]'
        timeout_ms = DOWN_WITHIN_SECS * 1000
        expect(page.locator(row)).to_have_attribute("data-state", "down", timeout=timeout_ms)
        shown_down_after = time.monotonic() - killed_at
        # Its session expires and the ring drops it: still listed, as down, never missing.
        ring_change = page.locator("#events tr[data-kind=ring]", has_text=f"-{victim.node_id}")
        expect(ring_change).to_have_count(1, timeout=10_000)
        expect(page.locator(row)).to_have_attribute("data-state", "down")
        fault = page.locator("#events tr[data-kind=fault]", has_text=f"{victim.node_id} down")
        expect(fault).to_have_count(1)
        expect(page.locator("#summary")).to_contain_text("2 of 3 members up")
        for node in cluster.nodes[:2]:
            survivor = f'#members tr[data-node="{node.node_id}"]'
            expect(page.locator(survivor)).to_have_attribute("data-state", "up")
        page.screenshot(path=str(shots / "one-down.png"), full_page=True)
        assert errors == []
    with capsys.disabled():
        print(
            f"\nstatus page: killed node shown down {shown_down_after:.1f} s after SIGKILL; "
            f"screenshots: {shots / 'all-up.png'} and {shots / 'one-down.png'}"
        )


USER, PASSWORD = "storm", "page s3cret"


def test_page_under_digest_authenticates_in_the_browser(browser: Browser, tmp_path: Path) -> None:
    jaas = tmp_path / "jaas.conf"
    jaas.write_text(f'PacemakerDigest {{\n  username="{USER}"\n  password="{PASSWORD}";\n}};\n')
    keys = {
        **NODE_KEYS,
        "pacemaker.auth.method": "DIGEST",
        "java.security.auth.login.config": str(jaas),
    }
    with NodeCluster(3, workdir=tmp_path, extra=keys) as cluster:
        for route in ("/", "/v1/cluster"):  # the page and its JSON are gated like reads
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{cluster.urls[0]}{route}", timeout=5)
            assert refused.value.code == 401
            assert "Digest" in refused.value.headers.get("WWW-Authenticate", "")
        with urllib.request.urlopen(f"{cluster.urls[0]}/health", timeout=5) as health:
            assert health.status == 200  # /health stays open
        # No credentials, or a wrong password: the browser never gets the page.
        for password in (None, "wrong"):
            credentials = None if password is None else {"username": USER, "password": password}
            refused = browser.new_context(http_credentials=credentials)
            assert page_refused(refused.new_page(), f"{cluster.urls[0]}/")
            refused.close()

        context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
        page = context.new_page()
        response = page.goto(f"{cluster.urls[0]}/")
        assert response is not None and response.status == 200
        # The page's own fetches authenticate too, and the node's requests to its peers
        # (their /v1/members is gated) carry the node's credentials: every member up.
        for node in cluster.nodes:
            row = f'#members tr[data-node="{node.node_id}"]'
            expect(page.locator(row)).to_have_attribute("data-state", "up", timeout=10_000)
            expect(page.locator(f"{row} td.epoch")).not_to_have_text("—")
        refreshes = int(page.locator("body").get_attribute("data-refreshes") or 0)
        expect(page.locator("body")).not_to_have_attribute("data-refreshes", str(refreshes))
        assert page.locator("#banner").is_hidden()
        context.close()
