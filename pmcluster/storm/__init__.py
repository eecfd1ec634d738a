"""Storm's Pacemaker wire protocol: framed Thrift `HBMessage`s on `pacemaker.port`.

`codec` (pure encoding, no I/O), `handler` (a request → a reply via a `Backend`), `server`
(the per-connection protocol and the HTTP/Storm port sharing), `auth` and `sasl_digest`
(Storm's DIGEST authentication: SASL DIGEST-MD5, server side), `frontend` (a node's Storm
front end, composed by `pmcluster.node.daemon`), `client` (an asyncio client).
The spec is `STORM-PROTOCOL.md`; Storm's names are kept as they are.
"""
