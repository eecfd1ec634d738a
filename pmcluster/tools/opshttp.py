"""HTTP from the operator tools (status, add-node, remove-node) to one node, with the cluster's
credentials and transport: when `pacemaker.auth.method` is not NONE, requests carry the JAAS
user's credentials and answer the node's challenge once (`pmcluster.auth.client`), so the
gated routes (`/v1/members`, the admin routes) work from an operator's machine too; when the
configuration speaks TLS (`pmcluster.tls.*`), URLs are `https` and certificates are verified
with the same context the cluster client uses (`pmcluster.auth.tls`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from pmcluster.auth.client import RequestAuth, make_request_auth
from pmcluster.auth.tls import client_ssl_context, tls_enabled
from pmcluster.config import Config
from pmcluster.errors import HttpStatusError
from pmcluster.protocol.http import ADMIN_SECRET_HEADER

__all__ = ["OpsHttp", "base_url"]


def base_url(host: str, port: int, *, tls: bool = False) -> str:
    """`http://host:port` (`https` with `tls`), bracketing an IPv6 literal."""
    scheme = "https" if tls else "http"
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


class OpsHttp:
    """One session for the tool's lifetime: `async with OpsHttp(config) as http: ...`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._auth: RequestAuth | None = make_request_auth(config)
        self._tls = tls_enabled(config)
        self._ssl = client_ssl_context(config)
        self._session: aiohttp.ClientSession | None = None

    def url(self, host: str, port: int) -> str:
        """The base URL of the node at host:port, in this configuration's scheme."""
        return base_url(host, port, tls=self._tls)

    async def __aenter__(self) -> OpsHttp:
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
        self._session = aiohttp.ClientSession(connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """(status, body); raises aiohttp/OS errors and TimeoutError as they come."""
        assert self._session is not None, "use OpsHttp as an async context manager"
        target = URL(url)
        limit = aiohttp.ClientTimeout(total=timeout or self.config.request_timeout_secs)
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        if "/v1/admin/" in target.path and self.config.admin_secret_file:
            # The admin routes from another host need the admin secret (node/admin.py).
            secret = Path(self.config.admin_secret_file).read_bytes().strip()
            headers[ADMIN_SECRET_HEADER] = secret.decode("utf-8", "replace")
        pending = None if self._auth is None else await self._auth.begin(method, target)
        while True:
            sent = headers if pending is None else {**headers, **pending.headers}
            async with self._session.request(
                method, target, data=data, headers=sent, timeout=limit
            ) as resp:
                raw = await resp.read()
                if pending is None or not await pending.finish(resp.status, resp.headers):
                    return resp.status, raw

    async def get_text(self, url: str, *, timeout: float | None = None) -> str:
        """GET a body as text; a non-2xx status raises `HttpStatusError` naming it."""
        status, raw = await self.request("GET", url, timeout=timeout)
        if not 200 <= status < 300:
            raise HttpStatusError(f"GET {url}", status, raw[:200].decode(errors="replace"))
        return raw.decode(errors="replace")

    async def get_json(self, url: str, *, timeout: float | None = None) -> Any:
        """GET a JSON document; a non-2xx status raises `HttpStatusError`, a body that is not
        JSON `ValueError`."""
        return json.loads(await self.get_text(url, timeout=timeout))
