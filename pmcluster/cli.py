"""The `pmcluster` command line: the node daemon, a client for the eight operations, cluster views.

Exit codes of the client commands: 0 ok, 1 absent (get/exists/ls on nothing), 2 error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pmcluster import __version__
from pmcluster.config import LOG_LEVELS, Config, load_config
from pmcluster.errors import ConfigError, PmclusterError

if TYPE_CHECKING:
    from pmcluster.client import SyncClusterClient

EXIT_OK, EXIT_ABSENT, EXIT_ERROR = 0, 1, 2


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="Storm-style YAML config file")
    parser.add_argument(
        "--servers",
        metavar="HOST[:PORT],...",
        help="comma-separated seed nodes (overrides pacemaker.servers)",
    )
    parser.add_argument(
        "--zookeeper",
        metavar="HOST:PORT,...",
        help="ZooKeeper connect string (overrides storm.zookeeper.servers)",
    )
    parser.add_argument("--timeout", type=float, help="request timeout in seconds")


def _client_config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    if args.servers:
        overrides["pacemaker.servers"] = args.servers
    if args.zookeeper:
        overrides["storm.zookeeper.servers"] = args.zookeeper
    if getattr(args, "timeout", None):
        overrides["pmcluster.request.timeout.secs"] = args.timeout
        overrides["pmcluster.connect.timeout.secs"] = min(args.timeout, 0.5)
    config = load_config(args.config, overrides)
    if not config.servers and not config.zk_servers:
        config = load_config(args.config, {**overrides, "pacemaker.servers": ["127.0.0.1"]})
    return config


def _client(args: argparse.Namespace, config: Config | None = None) -> SyncClusterClient:
    from pmcluster.client import SyncClusterClient

    return SyncClusterClient(_client_config(args) if config is None else config)


# --- commands --------------------------------------------------------------------------------


def cmd_node(args: argparse.Namespace) -> int:
    """Run the node daemon in the foreground until SIGTERM/SIGINT."""
    from pmcluster.daemon import run_node

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


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        pulse = client.get_pulse(args.path)
    if pulse is None:
        print(f"absent: {args.path}", file=sys.stderr)
        return EXIT_ABSENT
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
        print(name)
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
    from pmcluster.ring import Ring, balance_estimate

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
        print(f"max/mean = {max(counts.values()) / mean:.3f}")
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    from pmcluster.demo import run_up

    return run_up(args)


def cmd_status(args: argparse.Namespace) -> int:
    from pmcluster.status import run_status

    return run_status(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from pmcluster.bench import run_bench

    return run_bench(args)


def cmd_soak(args: argparse.Namespace) -> int:
    from pmcluster.soak import run_command

    return run_command(args)


def cmd_fuzz(args: argparse.Namespace) -> int:
    from pmcluster.fuzz import run_command

    return run_command(args)


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
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
    _add_config_args(p)

    p = command("get", cmd_get, "print a heartbeat's bytes (get_pulse)")
    p.add_argument("path")
    _add_config_args(p)

    p = command("exists", cmd_exists, "is there a heartbeat at exactly PATH")
    p.add_argument("path")
    _add_config_args(p)

    p = command("ls", cmd_ls, "list the direct children of PATH (get_all_nodes_for_path)")
    p.add_argument("path", nargs="?", default="/")
    _add_config_args(p)

    p = command("rm", cmd_rm, "delete a heartbeat (delete_pulse_id), or with -r a whole subtree")
    p.add_argument("-r", "--recursive", action="store_true", help="delete_path: PATH and below")
    p.add_argument("path")
    _add_config_args(p)

    p = command("members", cmd_members, "a node's view of the cluster: epoch and members")
    p.add_argument("--json", action="store_true", help="print the raw JSON view")
    _add_config_args(p)

    p = command("ring", cmd_ring, "owners of PATH, or the keys-per-node balance estimate")
    p.add_argument("path", nargs="?")
    p.add_argument("--keys", type=int, default=100_000, help="synthetic keys for the estimate")
    _add_config_args(p)

    p = command("up", cmd_up, "start a local cluster and drive a simulated Storm load")
    p.add_argument("--nodes", type=int, default=3, help="nodes on 127.0.0.1, .2, ... (3)")
    p.add_argument("--workers", type=int, default=200, help="simulated workers (200)")
    p.add_argument("--topologies", type=int, default=4, help="topologies (4)")
    p.add_argument("--payload", type=int, default=5 * 1024, help="heartbeat bytes (5120)")
    p.add_argument("--period", type=float, default=3.0, help="heartbeat period, s (3)")
    p.add_argument("--read-period", type=float, default=10.0, help="reader round, s (10)")
    p.add_argument("--port", default="auto", help="node port, or auto (6699 if free, else any)")
    p.add_argument("--zookeeper", help="use this ZooKeeper (HOST:PORT) instead of static members")
    p.add_argument("--duration", type=float, help="run this many seconds, then exit")
    p.add_argument("--workdir", help="where node configs and logs go (a temp dir)")

    p = command("status", cmd_status, "cluster health: every node's view, figures and a verdict")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--expect-nodes", type=int, help="DEGRADED when fewer members than this")

    p = command("bench", cmd_bench, "benchmark nodes against ZooKeeper and a bare aiohttp server")
    p.add_argument("--workers", type=int, default=10_000, help="heartbeat keys (10000)")
    p.add_argument("--payload", type=int, default=1024, help="write heartbeat bytes (1024)")
    p.add_argument("--read-payload", type=int, default=5120, help="read round bytes (5120)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per row (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (2)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight (64)")
    p.add_argument("--storm-connections", type=int, default=8, help="Storm row: connections (8)")
    p.add_argument(
        "--storm-depth",
        type=int,
        default=100,
        help="Storm row: SEND_PULSEs in flight per connection (100, Storm's client limit)",
    )
    p.add_argument("--clients", type=int, default=2, help="load generator processes (2)")
    p.add_argument("--topologies", type=int, default=10, help="topologies (10)")
    p.add_argument("--batch", type=int, default=100, help="heartbeats per batch request (100)")
    p.add_argument("--memory-keys", type=int, default=100_000, help="keys for memory (100000)")
    p.add_argument("--read-rounds", type=int, default=3, help="measured read rounds (3)")
    p.add_argument("--rows", help="comma list of zk,baseline,put,batch,storm,cluster,read,memory")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks every row runs")
    p.add_argument("--no-zookeeper", action="store_true", help="skip the ZooKeeper rows")
    p.add_argument("--workdir", help="keep configs and logs here (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temp work dir")

    from pmcluster.ops import add_subcommands  # add-node, remove-node

    add_subcommands(sub)
    from pmcluster.fuzz import add_arguments as add_fuzz_arguments

    add_fuzz_arguments(command("fuzz", cmd_fuzz, "fuzz a running node, then check it is intact"))
    from pmcluster.soak import add_arguments as add_soak_arguments

    add_soak_arguments(command("soak", cmd_soak, "long run: 3 nodes, Storm-sized load, kill -9s"))

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
