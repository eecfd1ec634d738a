"""Storm's Pacemaker wire protocol: framed Thrift `HBMessage`s on `pacemaker.port`.

`codec` (pure encoding, no I/O) and `fastcodec` (Storm's usual frame layouts, fast),
`handler` (a request → a reply via a `Backend`), `server` (the per-connection protocol),
`auth`, `sasl_digest` and `sasl_gssapi` (Storm's DIGEST and KERBEROS authentication, server
side), `client` (an asyncio client), `metrics`. A node's Storm front end and the port it
shares with HTTP live in the node layer: `pmcluster.node.stormfront`, `pmcluster.node.sharedport`.
The spec is `STORM-PROTOCOL.md`; Storm's names are kept as they are.
"""
