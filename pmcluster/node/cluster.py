"""A node's part in the cluster: membership, its view of the ring, coordination of requests.

`cluster_ctx` is an aiohttp cleanup context the daemon adds to the node's app. At start-up it
registers the node with its membership source (ZooKeeper, or the static/DNS seed list), keeps
the node's epoch and member list (headers, `GET /v1/members`) in step with every snapshot,
and installs a `CoordinatingBackend` so a plain request for any path is answered for the
whole cluster. The node registers only once its socket listens (`NodeState.join`, called by
the daemon). A new ZooKeeper session (after expiry) wipes the store before the node
re-registers: a node that was away may have missed deletes. An empty node (new, or wiped) is
safe because writes are acknowledged by every live owner and readers merge the owners'
answers; for two grace windows after it registers its "absent" is marked as no answer
(`NodeState.is_fresh`), so an empty replica alone never reports a live heartbeat absent. A
node that cannot reach ZooKeeper while a peer answers with a newer epoch fences itself (no
data request answered, 503) until it is registered again. A grace window after each ring change the
node hands off the keys it no longer owns (`handoff.HandOff`). On shutdown the node leaves
the membership before it drains (`NodeState.leave`). Anti-entropy (`antientropy.AntiEntropy`)
runs for the context's lifetime on the client's ring, and not while the node is fenced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from pmcluster.client import ClusterClient
from pmcluster.config import peer_config
from pmcluster.membership import MembershipSnapshot, make_membership
from pmcluster.node.antientropy import make_antientropy
from pmcluster.node.appstate import (
    CONFIG_KEY,
    HISTORY_KEY,
    LOCAL_BACKEND_KEY,
    STATE_KEY,
    STORE_KEY,
    members_doc,
)
from pmcluster.node.coordinator import CoordinatingBackend, LocalTransport
from pmcluster.node.handoff import HandOff
from pmcluster.ring import Member

log = logging.getLogger(__name__)

# How long a node that joined or restarted empty marks its "absent" as no answer, in grace
# windows: writers fill it within one period, hand-off within one grace window after that.
FRESH_GRACE_WINDOWS = 2


async def cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """Join the cluster for the app's lifetime; leave it (and stop watching) at cleanup.

    The node is registered only by `NodeState.join`, which the daemon calls once its socket
    listens."""
    config, state, store = app[CONFIG_KEY], app[STATE_KEY], app[STORE_KEY]
    history = app[HISTORY_KEY]
    self_member = Member(config.node_id, config.host, config.port, config.zone)
    fresh_secs = FRESH_GRACE_WINDOWS * config.grace_window_secs

    def wipe() -> None:
        log.warning("new membership session: wiping %d keys before re-registering", store.key_count)
        history.record("fault", f"new membership session: wiped {store.key_count} keys")
        store.clear()

    def registered() -> None:
        # Empty (new process, or wiped): writers fill it within a period, hand-off within a
        # grace window; until then its absent is no answer.
        state.fresh_until = time.monotonic() + fresh_secs
        if state.fenced:
            log.warning("registered again on a new session: no longer fenced")
            state.fenced = False
        client.follow_membership()

    membership = make_membership(
        config, self_member, on_new_session=wipe, on_registered=registered, register=False
    )
    handoff: HandOff | None = None

    def on_snapshot(snapshot: MembershipSnapshot) -> None:
        if (
            state.fenced
            and getattr(membership, "state", "CONNECTED") == "CONNECTED"
            and config.node_id in snapshot.node_ids
        ):
            # ZooKeeper answers again on the same session, and lists this node: the session
            # was never lost, so nothing re-registers; the fence ends here.
            log.warning("ZooKeeper reachable again and this node is a member: no longer fenced")
            state.fenced = False
            client.follow_membership()
        if snapshot.epoch != state.epoch:
            log.info("membership epoch %s: %s", snapshot.epoch, ", ".join(snapshot.node_ids))
            if handoff is not None:
                handoff.ring_changed()
        state.epoch = snapshot.epoch
        state.members = snapshot.node_ids
        state.member_docs = [m.describe() for m in snapshot.members]
        history.ring_changed(snapshot.epoch, snapshot.members)

    def on_behind(node_id: str, epoch: str) -> None:
        """A peer answered with a newer ZooKeeper epoch. If this node cannot reach ZooKeeper
        meanwhile, the membership moved on without it (most likely it was dropped): fence
        until registered again. Fenced, its store answers no peer, and it coordinates only
        on the ring its peers hold (`ClusterClient.follow_peers`), never on its own old one."""
        if state.fenced or getattr(membership, "state", "CONNECTED") == "CONNECTED":
            return
        log.warning(
            "ZooKeeper unreachable and %s is at epoch %s (ours %s): fenced until registered "
            "again, coordinating on the peers' ring",
            node_id,
            epoch,
            state.epoch,
        )
        state.fenced = True
        client.follow_peers(node_id, epoch)

    state.membership_state = lambda: str(getattr(membership, "state", "static"))
    membership.subscribe(on_snapshot)
    await membership.start()
    current = membership.current()
    if current is not None:
        on_snapshot(current)
    local = LocalTransport(
        config.node_id,
        app[LOCAL_BACKEND_KEY],
        lambda: members_doc(app),
        is_fresh=state.is_fresh,
    )
    # Its peers get a share of the request timeout: a client waiting one timeout through
    # this node gets an answer even when an owner hangs.
    client = ClusterClient(peer_config(config), membership=membership, local=local)
    client.on_behind(on_behind)
    await client.start()
    handoff = HandOff(store, client, config.node_id, config.grace_window_secs)
    state.coordinator = CoordinatingBackend(
        app[LOCAL_BACKEND_KEY], client, fenced=lambda: state.fenced
    )
    state.leave = getattr(membership, "leave", None)
    register = getattr(membership, "register", None)

    async def join() -> None:
        if register is not None:
            await register()
        else:  # a seed or fixed member list: nothing to register, just as empty
            registered()

    state.join = join
    # Anti-entropy (issue 15): owners compare digests and repair what differs.
    antientropy = make_antientropy(app, client, fenced=lambda: state.fenced)
    antientropy.start()
    try:
        yield
    finally:
        await antientropy.close()
        state.coordinator = None
        state.join = None
        await handoff.close()
        await client.close()
        await membership.stop()
