"""Heartbeat path validation and URL percent-encoding, both ways.

A heartbeat path is a `str` starting with `/`, components separated by `/`. Storm ids carry
punctuation such as `( ) + $ [ ] %`, so every component is percent-encoded on its own when a
path travels in a URL, and `from_url` is its strict inverse: any valid path round-trips byte
for byte. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

from pmcluster.errors import InvalidPath

__all__ = [
    "DEFAULT_MAX_PATH_BYTES",
    "DEFAULT_MAX_PATH_DEPTH",
    "from_url",
    "normalize",
    "normalize_key",
    "path_limits",
    "set_path_limits",
    "to_url",
]

# Storm's paths are 3-4 components and well under 300 bytes; a path's cost in the store grows
# with the square of its depth (the parents index), so both are bounded. A node sets them from
# `pmcluster.path.max.bytes` / `pmcluster.path.max.depth` at start (`set_path_limits`).
DEFAULT_MAX_PATH_BYTES = 4096
DEFAULT_MAX_PATH_DEPTH = 64
_max_bytes = DEFAULT_MAX_PATH_BYTES
_max_depth = DEFAULT_MAX_PATH_DEPTH

# A `%` not followed by two hex digits: the one thing `unquote` would silently let through.
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SHOW_MAX = 120


def _show(text: str) -> str:
    """A path for an error message, shortened so a huge path cannot flood a log line."""
    if len(text) > _SHOW_MAX:
        return repr(text[:_SHOW_MAX]) + f"... ({len(text)} chars)"
    return repr(text)


def set_path_limits(max_bytes: int, max_depth: int) -> None:
    """The process's path limits (a node: from its config, once at start)."""
    global _max_bytes, _max_depth
    _max_bytes, _max_depth = max_bytes, max_depth


def path_limits() -> tuple[int, int]:
    """(max bytes, max components) a path may have in this process."""
    return _max_bytes, _max_depth


def _check_limits(path: str) -> None:
    if len(path) > _max_bytes or (not path.isascii() and len(path.encode("utf-8")) > _max_bytes):
        raise InvalidPath(
            f"path of {len(path.encode('utf-8', 'surrogatepass'))} bytes exceeds the limit of "
            f"{_max_bytes} (pmcluster.path.max.bytes): {_show(path)}"
        )
    depth = path.count("/")
    if depth > _max_depth:
        raise InvalidPath(
            f"path of {depth} components exceeds the limit of {_max_depth} "
            f"(pmcluster.path.max.depth): {_show(path)}"
        )


def normalize(path: str) -> str:
    """Return `path` without trailing `/` (root `/` stays `/`), or raise `InvalidPath`.

    Rejected: a non-string, the empty string, a relative path, an empty component (`/a//b`,
    `//`), a `.` or `..` component, a NUL character, text that is not encodable as UTF-8, a
    path longer or deeper than the limits (`set_path_limits`).
    """
    if not isinstance(path, str):
        raise InvalidPath(f"path must be a string, not {type(path).__name__}")
    if not path:
        raise InvalidPath("empty path")
    if path[0] != "/":
        raise InvalidPath(f"path must start with '/': {_show(path)}")
    if len(path) > 1 and path[-1] == "/":
        stripped = path.rstrip("/")
        if not stripped:
            raise InvalidPath(f"empty path component in {_show(path)}")
        path = stripped
    if "//" in path:
        raise InvalidPath(f"empty path component in {_show(path)}")
    if "\x00" in path:
        raise InvalidPath(f"NUL character in path {_show(path)}")
    if "/." in path:
        for component in path.split("/"):
            if component in (".", ".."):
                raise InvalidPath(f"{component!r} component in path {_show(path)}")
    if not path.isascii():
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidPath(f"path is not valid Unicode text: {_show(path)}") from None
    if len(path) > 64:  # short paths are within any limit (at least 64 bytes, 1 component)
        _check_limits(path)
    return path


def normalize_key(path: str) -> str:
    """`normalize`, and also reject the root `/`: for anything that stores or reads one key."""
    path = normalize(path)
    if path == "/":
        raise InvalidPath("the root '/' is not a key")
    return path


def to_url(path: str) -> str:
    """Encode a path for a URL: each component quoted with `safe=""`, joined by `/`, no leading `/`.

    The root `/` encodes to the empty string.
    """
    path = normalize(path)
    if path == "/":
        return ""
    return "/".join(quote(component, safe="") for component in path[1:].split("/"))


def from_url(raw: str) -> str:
    """Strict inverse of `to_url`: decode percent-escapes, add the leading `/`, normalise.

    `%` must be followed by two hex digits and the decoded bytes must be UTF-8, else
    `InvalidPath`. `%2F` decodes to `/`, so a fully encoded path also works; a result that
    already starts with `/` gets no second one. `+` is a literal plus, never a space.
    """
    bad = _BAD_PERCENT.search(raw)
    if bad is not None:
        snippet = raw[bad.start() : bad.start() + 3]
        raise InvalidPath(
            f"malformed percent-encoding {snippet!r} at offset {bad.start()} in {_show(raw)}"
        )
    try:
        decoded = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPath(f"URL path is not valid Unicode text: {_show(raw)}") from None
    except UnicodeDecodeError as exc:
        raise InvalidPath(
            f"percent-encoded bytes are not valid UTF-8 ({exc.reason}) in {_show(raw)}"
        ) from None
    if not decoded.startswith("/"):
        decoded = "/" + decoded
    return normalize(decoded)
