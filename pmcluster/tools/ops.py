"""`pmcluster add-node` and `pmcluster remove-node`: grow or shrink a cluster from anywhere.

Both take the cluster's YAML (`--config`) and talk to the nodes over HTTP (and to ZooKeeper
for the membership), so they work from an operator's machine as well as on a node's host.

- add-node starts a node with the given config (detached, `pacemaker.childopts` applied as
  Python interpreter options) or prints the systemd commands that do it on the node's host;
  then waits until every node (the new one included) reports the same epoch with the new node
  among its members, waits one heartbeat period (so every worker has re-sent to the new
  owners), and reports how many keys the new node holds.
- remove-node refuses when fewer nodes than the replication factor would remain (unless
  `--force`), asks the node to drain (`POST /v1/admin/drain`: leave, serve through the grace
  window, verify the new owners hold fresh copies, stop), follows the drain, and waits until
  the node is out of every view and no longer answers.

Exit codes: 0 done, 1 refused (nothing changed), 2 failed or timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from pmcluster.auth.tls import tls_enabled
from pmcluster.client import ClusterClient
from pmcluster.config import Config, load_config
from pmcluster.errors import PmclusterError
from pmcluster.node.admin import DRAIN_ROUTE, FINAL_STATES
from pmcluster.tools.launch import node_argv
from pmcluster.tools.localcluster import log_tail
from pmcluster.tools.opshttp import OpsHttp, base_url

EXIT_DONE, EXIT_REFUSED, EXIT_FAILED = 0, 1, 2
POLL_SECS = 0.2
LOG_TAIL_LINES = 20


class OpsError(PmclusterError):
    """An ops command could not finish; the message says what was seen."""


class Refused(PmclusterError):
    """An ops command refused to act; nothing was changed."""


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node's answer to `GET /v1/members`."""

    node_id: str
    epoch: str
    members: tuple[str, ...]
    addresses: dict[str, str]  # node_id -> base URL, as the node describes its members
    replication: int


def _url_of(http: OpsHttp, node_id: str) -> str:
    host, _, port = node_id.rpartition(":")
    return http.url(host.strip("[]"), int(port))


async def fetch_view(http: OpsHttp, url: str, timeout: float) -> NodeView:
    """`GET /v1/members` of the node at `url`."""
    doc = await http.get_json(f"{url}/v1/members", timeout=timeout)
    members: list[str] = []
    addresses: dict[str, str] = {}
    for item in doc.get("members", []):
        if isinstance(item, dict):
            node_id = str(item["node_id"])
            addresses[node_id] = http.url(str(item["host"]), int(item["port"]))
        else:
            node_id = str(item)
            addresses[node_id] = _url_of(http, node_id)
        members.append(node_id)
    return NodeView(
        node_id=str(doc.get("node")),
        epoch=str(doc.get("epoch")),
        members=tuple(sorted(members)),
        addresses=addresses,
        replication=int(doc.get("replication", 0)),
    )


async def gather_views(
    http: OpsHttp, urls: dict[str, str], timeout: float
) -> dict[str, NodeView | None]:
    """Every node's view (None for a node that did not answer), in parallel."""

    async def one(url: str) -> NodeView | None:
        try:
            return await fetch_view(http, url, timeout)
        except (aiohttp.ClientError, TimeoutError, OSError, PmclusterError, ValueError, KeyError):
            return None

    views = await asyncio.gather(*(one(u) for u in urls.values()))
    return dict(zip(urls, views, strict=True))


def agreed_epoch(views: dict[str, NodeView | None], must_list: Iterable[str] = ()) -> str | None:
    """The epoch every node reports, when all answer with the same epoch and members (listing
    every one of `must_list`); else None."""
    answered = [v for v in views.values() if v is not None]
    if len(answered) != len(views) or not answered:
        return None
    if len({(v.epoch, v.members) for v in answered}) != 1:
        return None
    first = answered[0]
    if not set(must_list) <= set(first.members) or set(first.members) != set(views):
        return None
    return first.epoch


async def membership_urls(config: Config) -> dict[str, str]:
    """node_id -> base URL of every member, from ZooKeeper or the seeds' own view."""
    async with ClusterClient(config) as client:
        snapshot = await client.members()
    tls = tls_enabled(config)
    return {m.node_id: base_url(m.host, m.port, tls=tls) for m in snapshot.members}


async def wait_converged(
    config: Config,
    http: OpsHttp,
    must_list: Iterable[str],
    must_not_list: Iterable[str],
    timeout: float,
) -> tuple[str, dict[str, NodeView | None]]:
    """Poll every known node until all agree on one epoch whose members include `must_list`
    and exclude `must_not_list`; (epoch, views). Raises `OpsError` on timeout."""
    wanted, unwanted = set(must_list), set(must_not_list)
    urls = await membership_urls(config)
    urls.update({n: _url_of(http, n) for n in wanted if n not in urls})
    deadline = time.monotonic() + timeout
    views: dict[str, NodeView | None] = {}
    while True:
        known = {n: u for n, u in urls.items() if n not in unwanted}
        views = await gather_views(http, known, config.request_timeout_secs)
        for view in views.values():  # learn members from the nodes themselves
            for node_id, url in view.addresses.items() if view is not None else ():
                urls.setdefault(node_id, url)
        epoch = agreed_epoch(views, wanted)
        if epoch is not None and not unwanted & set(views):
            return epoch, views
        if time.monotonic() > deadline:
            raise OpsError(f"nodes did not converge within {timeout:g}s: {describe(views)}")
        await asyncio.sleep(POLL_SECS)


def describe(views: dict[str, NodeView | None]) -> str:
    parts = []
    for node_id, view in sorted(views.items()):
        if view is None:
            parts.append(f"{node_id}: no answer")
        else:
            parts.append(f"{node_id}: epoch {view.epoch}, {len(view.members)} members")
    return "; ".join(parts) or "no node known"


async def node_keys(http: OpsHttp, url: str, timeout: float) -> int:
    return int((await http.get_json(f"{url}/health", timeout=timeout))["keys"])


async def answers(http: OpsHttp, url: str, timeout: float) -> bool:
    """True if something answers HTTP at `url` (any status)."""
    try:
        await http.request("GET", f"{url}/health", timeout=timeout)
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
    return True


# --- add-node ---------------------------------------------------------------------------------


def systemd_commands(config_path: Path, config: Config) -> list[str]:
    """What to run on the node's host to start it under ops/deploy/pmcluster@.service."""
    name = config_path.stem
    env = f"PMCLUSTER_CHILDOPTS={config.childopts}"
    return [
        f"sudo install -D -m 0644 {shlex.quote(str(config_path))} /etc/pmcluster/{name}.yaml",
        f"echo {shlex.quote(env)} | sudo tee /etc/pmcluster/{name}.env >/dev/null",
        f"sudo systemctl enable --now pmcluster@{name}.service",
    ]


def start_detached(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start the node in its own session (it outlives this command), output to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"=== add-node: starting {shlex.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


async def add_node(args: argparse.Namespace, out: dict[str, Any]) -> None:
    config_path = Path(args.config).resolve()
    config = load_config(config_path)
    node_id, url = config.node_id, base_url(config.host, config.port, tls=tls_enabled(config))
    out["node"] = node_id
    async with OpsHttp(config) as http:
        proc: subprocess.Popen[bytes] | None = None
        if args.systemd:
            out["systemd"] = systemd_commands(config_path, config)
            _say(args, f"run on {config.host}:", *(f"  {c}" for c in out["systemd"]))
            if args.no_wait:
                return
        else:
            if await answers(http, url, config.request_timeout_secs):
                raise Refused(f"something already answers on {url}: is {node_id} running?")
            log_path = Path(args.log or f"pmcluster-node-{config.host}-{config.port}.log")
            argv = node_argv(config_path, config.childopts, args.python)
            proc = start_detached(argv, log_path.resolve())
            out.update(pid=proc.pid, log=str(log_path.resolve()), command=argv)
            if args.pidfile:
                Path(args.pidfile).write_text(f"{proc.pid}\n")
            _say(args, f"started {node_id} (pid {proc.pid}); log: {log_path}")
        deadline = time.monotonic() + args.timeout
        while not await answers(http, url, config.request_timeout_secs):
            if proc is not None and proc.poll() is not None:
                raise OpsError(
                    f"{node_id} exited with code {proc.returncode} while starting; "
                    f"log tail:\n{log_tail(Path(out['log']), LOG_TAIL_LINES)}"
                )
            if time.monotonic() > deadline:
                raise OpsError(f"{node_id} did not answer on {url} within {args.timeout:g}s")
            await asyncio.sleep(POLL_SECS)
        _say(args, f"{node_id} answers; waiting until every node agrees on a ring with it")
        remaining = max(deadline - time.monotonic(), 1.0)
        try:
            epoch, views = await wait_converged(config, http, [node_id], [], remaining)
        except OpsError as exc:
            raise OpsError(f"{exc} (static membership? see docs/operations.md)") from None
        out.update(epoch=epoch, members=sorted(views))
        # One heartbeat period (plus a request) later every worker has written to its new owners.
        await asyncio.sleep(config.heartbeat_secs + config.request_timeout_secs)
        out["keys"] = await node_keys(http, url, config.request_timeout_secs)
    _say(
        args,
        f"added {node_id}: {len(out['members'])} nodes agree on epoch {epoch}; "
        f"it now owns {out['keys']} keys",
    )


# --- remove-node ------------------------------------------------------------------------------


async def remove_node(args: argparse.Namespace, out: dict[str, Any]) -> None:
    config = load_config(args.config)
    node_id = args.node
    out["node"] = node_id
    async with OpsHttp(config) as http:
        urls = await membership_urls(config)
        if node_id not in urls:
            raise Refused(f"{node_id} is not a member; members: {', '.join(sorted(urls))}")
        url = urls[node_id]
        view = await fetch_view(http, url, config.request_timeout_secs)
        replication = view.replication or config.replication
        remaining = len(urls) - 1
        if remaining < replication and not args.force:
            raise Refused(
                f"refusing to remove {node_id}: {remaining} node(s) would remain, fewer than "
                f"the replication factor {replication} (pmcluster.replication), so heartbeats "
                "would have fewer copies than configured; add a node first, or pass --force"
            )
        status, raw = await http.request(
            "POST", f"{url}{DRAIN_ROUTE}", body={"force": bool(args.force)}
        )
        doc = _json_or_text(raw)
        if status == 409:
            raise Refused(f"{node_id} refused to drain: {doc.get('detail', doc)}")
        if status >= 400:
            raise OpsError(f"{node_id}: drain: HTTP {status}: {doc}")
        _say(args, f"draining {node_id} (grace window {doc.get('grace_secs')}s)")
        deadline = time.monotonic() + args.timeout
        drain = await follow_drain(http, url, deadline)
        out["drain"] = drain
        if drain.get("state") == "failed":
            raise OpsError(f"drain of {node_id} failed: {drain.get('error')}")
        remaining_s = max(deadline - time.monotonic(), 1.0)
        epoch, views = await wait_converged(config, http, [], [node_id], remaining_s)
        while await answers(http, url, config.request_timeout_secs):
            if time.monotonic() > deadline:
                raise OpsError(f"{node_id} left the ring but still answers on {url}")
            await asyncio.sleep(POLL_SECS)
        out.update(epoch=epoch, members=sorted(views), exited=True)
    _say(
        args,
        f"removed {node_id}: it held {drain.get('keys')} keys, {drain.get('verified')} already "
        f"on their new owners, {drain.get('resent')} re-sent; {len(views)} nodes agree on "
        f"epoch {epoch}; the process has exited",
    )


def _json_or_text(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        return {"detail": raw[:300].decode(errors="replace")}
    return doc if isinstance(doc, dict) else {"detail": doc}


async def follow_drain(http: OpsHttp, url: str, deadline: float) -> dict[str, Any]:
    """Long-poll `GET /v1/admin/drain` until a final state; a node that stops answering after
    reporting "done" (or while stopping) has exited as planned."""
    last: dict[str, Any] = {}
    while True:
        wait = max(min(deadline - time.monotonic(), 5.0), 0.1)
        try:
            last = await http.get_json(f"{url}{DRAIN_ROUTE}?wait={wait:.1f}", timeout=wait + 5)
        except (aiohttp.ClientError, TimeoutError, OSError, PmclusterError, ValueError) as exc:
            if last.get("state") in ("stopping", "done"):
                return {**last, "state": "done"}
            if time.monotonic() > deadline:
                raise OpsError(f"lost contact with {url} while draining: {exc}") from None
            await asyncio.sleep(POLL_SECS)
            continue
        if last.get("state") in FINAL_STATES:
            return last
        if time.monotonic() > deadline:
            raise OpsError(f"drain of {url} not finished in time: {last}")


# --- entry points -----------------------------------------------------------------------------


def _say(args: argparse.Namespace, *lines: str) -> None:
    if not args.json:
        for line in lines:
            print(line, flush=True)


def _run(args: argparse.Namespace, command: Any) -> int:
    out: dict[str, Any] = {}
    code, message = EXIT_DONE, ""
    try:
        asyncio.run(command(args, out))
    except Refused as exc:
        code, message = EXIT_REFUSED, str(exc)
    except (OpsError, PmclusterError, aiohttp.ClientError, OSError) as exc:
        code, message = EXIT_FAILED, str(exc) or type(exc).__name__
    if args.json:
        out["result"] = {EXIT_DONE: "done", EXIT_REFUSED: "refused"}.get(code, "failed")
        if message:
            out["message"] = message
        print(json.dumps(out, indent=2))
    elif message:
        print(f"pmcluster {args.command}: {message}", file=sys.stderr)
    return code


def run_add_node(args: argparse.Namespace) -> int:
    """`pmcluster add-node`; the process exit code."""
    return _run(args, add_node)


def run_remove_node(args: argparse.Namespace) -> int:
    """`pmcluster remove-node`; the process exit code."""
    return _run(args, remove_node)


def add_node_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `pmcluster add-node`: start a node with the given config (or print the
    systemd commands), wait until every node reports the same epoch with it among the
    members, report its keys."""
    p.add_argument("--config", required=True, metavar="FILE", help="the new node's YAML")
    p.add_argument("--systemd", action="store_true", help="print the systemd commands instead")
    p.add_argument("--no-wait", action="store_true", help="with --systemd: only print")
    p.add_argument("--log", metavar="FILE", help="node output (pmcluster-node-HOST-PORT.log)")
    p.add_argument("--pidfile", metavar="FILE", help="write the node's PID here")
    p.add_argument("--python", default=sys.executable, help="interpreter for the node")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def remove_node_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `pmcluster remove-node`: drain a node without loss (it leaves the
    membership, serves reads through the grace window, the new owners are checked to hold
    fresh copies), then it exits."""
    p.add_argument("--config", required=True, metavar="FILE", help="the cluster's YAML")
    p.add_argument("--node", required=True, metavar="HOST:PORT", help="the node to remove")
    p.add_argument("--force", action="store_true", help="even below the replication factor")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (120)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


__all__ = [
    "add_node_arguments",
    "remove_node_arguments",
    "run_add_node",
    "run_remove_node",
    "systemd_commands",
]
