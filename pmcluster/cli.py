"""The `pmcluster` command line: the node daemon, a client for the eight operations, cluster views.

Exit codes of the client commands: 0 ok, 1 absent (get/exists/ls on nothing), 2 error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pmcluster import __version__
from pmcluster.config import LOG_LEVELS, Config, add_client_arguments, client_config, load_config
from pmcluster.errors import ConfigError, PmclusterError

if TYPE_CHECKING:
    from pmcluster.client import SyncClusterClient

EXIT_OK, EXIT_ABSENT, EXIT_ERROR = 0, 1, 2


def _client_config(args: argparse.Namespace) -> Config:
    return client_config(
        args.config,
        servers=args.servers,
        zookeeper=args.zookeeper,
        timeout=getattr(args, "timeout", None),
    )


def _client(args: argparse.Namespace, config: Config | None = None) -> SyncClusterClient:
    from pmcluster.client import SyncClusterClient

    return SyncClusterClient(_client_config(args) if config is None else config)


# --- commands --------------------------------------------------------------------------------


def cmd_node(args: argparse.Namespace) -> int:
    """Run the node daemon in the foreground until SIGTERM/SIGINT."""
    from pmcluster.node.daemon import run_node

    overrides: dict[str, Any] = {
        "pacemaker.host": args.host,
        "pacemaker.port": args.port,
        "pmcluster.log.level": args.log_level,
    }
    if args.servers:
        overrides["pacemaker.servers"] = args.servers
    if args.zookeeper:
        overrides["storm.zookeeper.servers"] = args.zookeeper
    config = load_config(args.config, overrides)
    return run_node(config)


def cmd_put(args: argparse.Namespace) -> int:
    if args.file in (None, "-"):
        data = sys.stdin.buffer.read()
    else:
        with open(args.file, "rb") as handle:
            data = handle.read()
    with _client(args) as client:
        client.send_pulse(args.path, data)
    return EXIT_OK


def _decoded(data: bytes) -> str:
    """A Storm worker heartbeat as one line (or why it is not one)."""
    import time

    from pmcluster.storm.heartbeat import HeartbeatDecodeError, decode_heartbeat, describe

    try:
        return describe(decode_heartbeat(data), time.time())
    except HeartbeatDecodeError as exc:
        return f"not a Storm worker heartbeat ({len(data)} bytes): {exc}"


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        pulse = client.get_pulse(args.path)
    if pulse is None:
        print(f"absent: {args.path}", file=sys.stderr)
        return EXIT_ABSENT
    if args.decode:
        print(_decoded(pulse.data))
        return EXIT_OK
    sys.stdout.buffer.write(pulse.data)
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_exists(args: argparse.Namespace) -> int:
    with _client(args) as client:
        found = client.exists(args.path)
    print("true" if found else "false")
    return EXIT_OK if found else EXIT_ABSENT


def cmd_ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        names = client.get_all_nodes_for_path(args.path)
        for name in names:
            if not args.decode:
                print(name)
                continue
            pulse = client.get_pulse(f"{args.path.rstrip('/')}/{name}")
            # a name with no heartbeat of its own is a directory (e.g. a topology id)
            print(f"{name}/" if pulse is None else f"{name}  {_decoded(pulse.data)}")
    return EXIT_OK if names else EXIT_ABSENT


def cmd_rm(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.recursive:
            client.delete_path(args.path)
        else:
            client.delete_pulse_id(args.path)
    return EXIT_OK


def cmd_members(args: argparse.Namespace) -> int:
    with _client(args) as client:
        view = client.members_view()
    if args.json:
        print(json.dumps(view, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"epoch:    {view.get('epoch')}")
    print(f"answered: {view.get('node')}")
    print(f"replication: {view.get('replication')}  points per node: {view.get('points')}")
    for member in view.get("members", []):
        if isinstance(member, dict):
            zone = f"  zone={member['zone']}" if member.get("zone") else ""
            print(f"  {member.get('node_id')}{zone}")
        else:
            print(f"  {member}")
    return EXIT_OK


def cmd_ring(args: argparse.Namespace) -> int:
    from pmcluster.ring import Ring, balance_estimate, balance_summary

    config = _client_config(args)
    with _client(args, config) as client:
        snapshot = client.members()
    ring = Ring(
        snapshot.members, snapshot.epoch, points=config.ring_points, replication=config.replication
    )
    print(f"epoch {ring.epoch}: {len(ring.members)} members, R={ring.replication}")
    if args.path:
        owners = ring.owners(args.path)
        for rank, member in enumerate(owners):
            role = "primary" if rank == 0 else "replica"
            print(f"  {role:8} {member.node_id}")
        return EXIT_OK
    counts = balance_estimate(ring, args.keys)
    mean = sum(counts.values()) / max(len(counts), 1)
    print(f"keys per node (primaries, {args.keys} synthetic heartbeat paths):")
    for node_id, count in sorted(counts.items()):
        print(f"  {node_id:24} {count:8}  {count / mean if mean else 0:.3f} x mean")
    if mean:
        print(f"max/mean = {balance_summary(counts)['max_over_mean']:.3f}")
    return EXIT_OK


# --- tool commands: their modules (and arguments) are imported only when chosen ------------


@dataclass(frozen=True)
class ToolCommand:
    """A subcommand run by a module under `pmcluster.tools`: `add_arguments(parser)` there
    defines its options, `run(args)` runs it. Neither is imported unless the command is the
    one chosen, so `pmcluster get` never loads the tools, the harness or the node."""

    module: str
    help: str
    add_arguments: str = "add_arguments"
    run: str = "run_command"

    def load(self, name: str) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), name)  # type: ignore[no-any-return]


TOOL_COMMANDS: dict[str, ToolCommand] = {
    "up": ToolCommand(
        "pmcluster.tools.demo",
        "start a local cluster and drive a simulated Storm load",
        run="run_up",
    ),
    "status": ToolCommand(
        "pmcluster.tools.status",
        "cluster health: every node's view, figures and a verdict",
        run="run_status",
    ),
    "bench": ToolCommand(
        "pmcluster.tools.bench",
        "benchmark nodes against ZooKeeper and a bare aiohttp server",
        run="run_bench",
    ),
    "add-node": ToolCommand(
        "pmcluster.tools.ops",
        "start a node and wait until every node agrees on a ring with it",
        "add_node_arguments",
        "run_add_node",
    ),
    "remove-node": ToolCommand(
        "pmcluster.tools.ops",
        "drain a node without loss (leave, grace window, verify copies, stop)",
        "remove_node_arguments",
        "run_remove_node",
    ),
    "fuzz": ToolCommand("pmcluster.tools.fuzz", "fuzz a running node, then check it is intact"),
    "soak": ToolCommand("pmcluster.tools.soak", "long run: 3 nodes, Storm-sized load, kill -9s"),
}


def _run_tool(args: argparse.Namespace) -> int:
    tool = TOOL_COMMANDS[args.command]
    result: int = tool.load(tool.run)(args)
    return result


# --- parser ----------------------------------------------------------------------------------


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The `pmcluster` parser; a tool command's own options are added only when it is
    `chosen` (the first argument), so building the parser imports no tool module."""
    parser = argparse.ArgumentParser(
        prog="pmcluster", description="pmcluster: a replicated heartbeat store for Storm"
    )
    parser.add_argument("--version", action="version", version=f"pmcluster {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> Any:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = command("node", cmd_node, "run a pmcluster node (the daemon, like `storm pacemaker`)")
    p.add_argument("--config", metavar="FILE", help="Storm-style YAML config file")
    p.add_argument("--host", help="bind and advertised address (pacemaker.host)")
    p.add_argument("--port", type=int, help="port (pacemaker.port)")
    p.add_argument("--servers", help="comma-separated static members (pacemaker.servers)")
    p.add_argument("--zookeeper", help="ZooKeeper connect string (storm.zookeeper.servers)")
    p.add_argument("--log-level", choices=LOG_LEVELS, type=str.upper, help="log level")

    p = command("put", cmd_put, "store a heartbeat (send_pulse) from FILE or stdin")
    p.add_argument("path")
    p.add_argument("file", nargs="?", help="file with the value, or - for stdin (default)")
    add_client_arguments(p)

    p = command("get", cmd_get, "print a heartbeat's bytes (get_pulse)")
    p.add_argument("path")
    p.add_argument(
        "--decode",
        action="store_true",
        help="show a Storm ClusterWorkerHeartbeat: topology, time_secs and age, uptime, executors",
    )
    add_client_arguments(p)

    p = command("exists", cmd_exists, "is there a heartbeat at exactly PATH")
    p.add_argument("path")
    add_client_arguments(p)

    p = command("ls", cmd_ls, "list the direct children of PATH (get_all_nodes_for_path)")
    p.add_argument("path", nargs="?", default="/")
    p.add_argument(
        "--decode",
        action="store_true",
        help="after each name, its Storm ClusterWorkerHeartbeat decoded (one get per name)",
    )
    add_client_arguments(p)

    p = command("rm", cmd_rm, "delete a heartbeat (delete_pulse_id), or with -r a whole subtree")
    p.add_argument("-r", "--recursive", action="store_true", help="delete_path: PATH and below")
    p.add_argument("path")
    add_client_arguments(p)

    p = command("members", cmd_members, "a node's view of the cluster: epoch and members")
    p.add_argument("--json", action="store_true", help="print the raw JSON view")
    add_client_arguments(p)

    p = command("ring", cmd_ring, "owners of PATH, or the keys-per-node balance estimate")
    p.add_argument("path", nargs="?")
    p.add_argument("--keys", type=int, default=100_000, help="synthetic keys for the estimate")
    add_client_arguments(p)

    for name, tool in TOOL_COMMANDS.items():
        p = command(name, _run_tool, tool.help)
        if name == chosen:
            tool.load(tool.add_arguments)(p)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"pmcluster: configuration error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except PmclusterError as exc:
        print(f"pmcluster: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"pmcluster: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
