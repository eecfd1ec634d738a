"""The loopback TCP proxy of the fault tests; it lives in `pmcluster.tools.tcpproxy` so the
nemesis of `pmcluster soak --nemesis` can use it too (tools must not import the harness)."""

from pmcluster.tools.tcpproxy import Mode, TcpProxy

__all__ = ["Mode", "TcpProxy"]
