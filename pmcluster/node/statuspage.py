"""`GET /`: the cluster status page, a static HTML page shipped with the package.

The page (`static/index.html`, package data) has no build step and no outside resources: its
script fetches `GET /v1/cluster` from the node that served it every `refresh_secs` and fills
its tables with `textContent` only. The node reads the file once and sends it with a Content
Security Policy that allows exactly its own inline script and style (by their sha256) and
requests to this node only. Authentication follows the read rules (`pmcluster.auth`): under
DIGEST or KERBEROS the browser authenticates for the page and, with the same credentials,
for the JSON it fetches.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib.resources import files

from aiohttp import web

__all__ = ["PAGE", "content_security_policy", "get_status_page", "page"]

PAGE = "index.html"
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


@functools.cache
def page() -> bytes:
    """The page's bytes (read from the package once)."""
    return files("pmcluster.node").joinpath("static", PAGE).read_bytes()


def _hashes(html: str, tag: str) -> str:
    blocks = [body for kind, body in _INLINE.findall(html) if kind == tag]
    digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
    return " ".join(f"'sha256-{d}'" for d in digests)


@functools.cache
def content_security_policy() -> str:
    """Only the page's own inline script and style run; it may only talk to this node (its
    icon is an empty `data:` URL, so the browser asks for no `/favicon.ico`)."""
    html = page().decode()
    return (
        "default-src 'none'; "
        f"script-src {_hashes(html, 'script')}; "
        f"style-src {_hashes(html, 'style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


async def get_status_page(request: web.Request) -> web.StreamResponse:
    """GET /: the status page."""
    return web.Response(
        body=page(),
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": content_security_policy(),
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
