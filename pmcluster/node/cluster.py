"""A node's part in the cluster: membership, its view of the ring, coordination of requests.

`cluster_ctx` is an aiohttp cleanup context the daemon adds to the node's app. At start-up it
registers the node with its membership source (ZooKeeper, or the static/DNS seed list), keeps
the node's epoch and member list (headers, `GET /v1/members`) in step with every snapshot,
and installs a `CoordinatingBackend` so a plain request for any path is answered for the
whole cluster. A new ZooKeeper session (after expiry) wipes the store before the node
re-registers: a node that was away may have missed deletes, and an empty replica is always
safe because readers merge the owners' answers. A grace window after each ring change the
node hands off the keys it no longer owns (`handoff.HandOff`). On shutdown the node leaves
the membership before it drains (`NodeState.leave`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from pmcluster.client import ClusterClient
from pmcluster.membership import MembershipSnapshot, make_membership
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


async def cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """Join the cluster for the app's lifetime; leave it (and stop watching) at cleanup."""
    config, state, store = app[CONFIG_KEY], app[STATE_KEY], app[STORE_KEY]
    history = app[HISTORY_KEY]
    self_member = Member(config.node_id, config.host, config.port, config.zone)

    def wipe() -> None:
        log.warning("new membership session: wiping %d keys before re-registering", store.key_count)
        history.record("fault", f"new membership session: wiped {store.key_count} keys")
        store.clear()

    membership = make_membership(config, self_member, on_new_session=wipe)
    handoff: HandOff | None = None

    def on_snapshot(snapshot: MembershipSnapshot) -> None:
        if snapshot.epoch != state.epoch:
            log.info("membership epoch %s: %s", snapshot.epoch, ", ".join(snapshot.node_ids))
            if handoff is not None:
                handoff.ring_changed()
        state.epoch = snapshot.epoch
        state.members = snapshot.node_ids
        state.member_docs = [m.describe() for m in snapshot.members]
        history.ring_changed(snapshot.epoch, snapshot.members)

    membership.subscribe(on_snapshot)
    await membership.start()
    current = membership.current()
    if current is not None:
        on_snapshot(current)
    local = LocalTransport(config.node_id, app[LOCAL_BACKEND_KEY], lambda: members_doc(app))
    client = ClusterClient(config, membership=membership, local=local)
    await client.start()
    handoff = HandOff(store, client, config.node_id, config.grace_window_secs)
    state.coordinator = CoordinatingBackend(app[LOCAL_BACKEND_KEY], client)
    leave = getattr(membership, "leave", None)
    state.leave = leave
    try:
        yield
    finally:
        state.coordinator = None
        await handoff.close()
        await client.close()
        await membership.stop()
