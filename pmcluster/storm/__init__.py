"""Storm's Pacemaker wire protocol: framed Thrift `HBMessage`s on `pacemaker.port`.

`codec` (pure encoding, no I/O), `handler` (a request → a reply via a `Backend`), `server`
(the per-connection protocol and the HTTP/Storm port sharing), `client` (an asyncio client).
The spec is `STORM-PROTOCOL.md`; Storm's names are kept as they are.
"""
