"""The node: an aiohttp server holding an in-memory store and coordinating what it does not own.

`app.make_app` builds the HTTP API; `daemon.run_node` serves it (with the Storm front end on
the same port, `sharedport`); `appstate` holds `NodeState` and the `AppKey`s, `requests` the
request parsing, `local` the store's `Backend`, `coordinator` the ring-aware one, `cluster`
membership for the app's lifetime, `handoff` and `admin` ring changes and drains, `fasthttp`
the HTTP fast path, `limits` and `metrics` the node's bounds and figures.
"""
