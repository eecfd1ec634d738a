"""HTTP from the operator tools (status, add-node, remove-node) to one node, with the cluster's
credentials: when `pacemaker.auth.method` is not NONE, requests carry the JAAS user's
credentials and answer the node's challenge once (`pmcluster.auth.client`), so the gated
routes (`/v1/members`, the admin routes) work from an operator's machine too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from pmcluster.auth.client import RequestAuth, make_request_auth
from pmcluster.config import Config
from pmcluster.protocol.http import ADMIN_SECRET_HEADER

__all__ = ["OpsHttp", "base_url"]


def base_url(host: str, port: int) -> str:
    """`http://host:port`, bracketing an IPv6 literal."""
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


class OpsHttp:
    """One session for the tool's lifetime: `async with OpsHttp(config) as http: ...`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._auth: RequestAuth | None = make_request_auth(config)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> OpsHttp:
        self._session = aiohttp.ClientSession()
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

    async def get_json(self, url: str, *, timeout: float | None = None) -> Any:
        """GET a JSON document; a non-2xx status raises `ValueError` naming it."""
        status, raw = await self.request("GET", url, timeout=timeout)
        if not 200 <= status < 300:
            raise ValueError(f"GET {url}: HTTP {status}: {raw[:200].decode(errors='replace')}")
        return json.loads(raw)
