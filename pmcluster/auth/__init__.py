"""Authentication and transport security (`pacemaker.auth.method`, `pmcluster.tls.*`).

- `jaas`: the JAAS login file (`PacemakerDigest`, `PacemakerServer`, `PacemakerClient`).
- `digest`: HTTP Digest (RFC 7616), server and client side.
- `kerberos`: SPNEGO with gssapi (imported only when KERBEROS is configured).
- `tokens`: signed, expiring nonces and session cookies any node of the cluster accepts.
- `middleware`: the node's gate (`make_auth_middleware`).
- `client`: the credentials pmcluster's own client sends (`make_request_auth`).
- `tls`: SSL contexts for the listener and the clients.
"""
