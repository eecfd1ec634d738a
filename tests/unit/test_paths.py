"""Path validation and URL encoding: what the HTTP layer and every client rely on."""

from __future__ import annotations

import pytest

from pmcluster.errors import InvalidPath
from pmcluster.protocol.paths import from_url, normalize, normalize_key, to_url

AWKWARD = [
    "/workerbeats/wc(1)+$[x]%?#~,/node é-6700",
    "/workerbeats/wordcount-3-1718000000/9c1de2-10.0.0.5-6700",
    "/a b/c%20d/e+f",
    "/%/%%/%2F/%zz",
    "/日本語/ключ/🚀",
    "/x?y=1&z=2#frag",
    "/~user/a,b;c=d:e@f!g*h'i",
    "/.hidden/..dots/a.b",
    "/back\\slash/tab\there",
    "/a",
]


@pytest.mark.parametrize("path", AWKWARD)
def test_url_round_trip_is_byte_for_byte(path: str) -> None:
    encoded = to_url(path)
    assert not encoded.startswith("/")
    assert from_url(encoded) == path
    assert from_url(encoded).encode("utf-8") == path.encode("utf-8")


@pytest.mark.parametrize("path", AWKWARD)
def test_encoded_components_carry_no_url_specials(path: str) -> None:
    # Every component is opaque in the URL: only the separators are literal slashes.
    encoded = to_url(path)
    assert encoded.count("/") == path.count("/") - 1
    for special in "?#% +()[]$,":
        if special == "%":
            continue
        assert special not in encoded


def test_to_url_of_the_storm_example() -> None:
    assert (
        to_url("/workerbeats/wc(1)+$[x]%?#~,/node é-6700")
        == "workerbeats/wc%281%29%2B%24%5Bx%5D%25%3F%23~%2C/node%20%C3%A9-6700"
    )


def test_root_encodes_to_empty_and_back() -> None:
    assert to_url("/") == ""
    assert from_url("") == "/"


def test_fully_encoded_path_decodes_too() -> None:
    assert from_url("workerbeats%2Ftopo%2Fnode-1") == "/workerbeats/topo/node-1"
    assert from_url("%2Fworkerbeats%2Ftopo") == "/workerbeats/topo"


def test_plus_is_a_literal_plus() -> None:
    assert from_url("a+b") == "/a+b"


def test_raw_non_ascii_in_url_is_accepted() -> None:
    assert from_url("node é") == "/node é"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("%", "'%'"),
        ("a/%4", "'%4'"),
        ("a/%zz", "'%zz'"),
        ("a/b%", "'%'"),
        ("a/%g1", "'%g1'"),
    ],
)
def test_malformed_percent_encoding_is_rejected(raw: str, fragment: str) -> None:
    with pytest.raises(InvalidPath, match="malformed percent-encoding") as info:
        from_url(raw)
    assert fragment in str(info.value)


@pytest.mark.parametrize("raw", ["%ff", "a/%C3", "a/%C3%28", "%ed%a0%80"])
def test_percent_encoded_invalid_utf8_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidPath, match="not valid UTF-8"):
        from_url(raw)


def test_lone_surrogate_in_url_is_rejected() -> None:
    with pytest.raises(InvalidPath):
        from_url("a/\udcff")


@pytest.mark.parametrize(
    "raw", ["a//b", "a/%2E", "a/%2E%2E/b", "a/%00", "a/./b", "a/../b", "%2F%2F", "a%2F%2Fb"]
)
def test_decoded_path_is_validated(raw: str) -> None:
    with pytest.raises(InvalidPath):
        from_url(raw)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "/"),
        ("/a", "/a"),
        ("/a/", "/a"),
        ("/a///", "/a"),
        ("/a/b/c/", "/a/b/c"),
        ("/.a/b..", "/.a/b.."),
    ],
)
def test_normalize(path: str, expected: str) -> None:
    assert normalize(path) == expected


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty path"),
        ("a/b", "must start with '/'"),
        ("workerbeats", "must start with '/'"),
        (".", "must start with '/'"),
        ("..", "must start with '/'"),
        ("//", "empty path component"),
        ("///", "empty path component"),
        ("/a//b", "empty path component"),
        ("//a", "empty path component"),
        ("/.", "'.' component"),
        ("/..", "'..' component"),
        ("/a/./b", "'.' component"),
        ("/a/../b", "'..' component"),
        ("/a/..", "'..' component"),
        ("/a/\x00b", "NUL"),
        ("/a/\ud800", "not valid Unicode"),
    ],
)
def test_normalize_rejects(path: str, reason: str) -> None:
    with pytest.raises(InvalidPath, match=reason):
        normalize(path)


def test_normalize_rejects_non_strings() -> None:
    with pytest.raises(InvalidPath, match="must be a string"):
        normalize(b"/a")  # type: ignore[arg-type]


def test_normalize_key_rejects_root_only() -> None:
    assert normalize_key("/a/b/") == "/a/b"
    for root in ("/", "//"):
        with pytest.raises(InvalidPath):
            normalize_key(root)


def test_error_message_of_huge_path_is_bounded() -> None:
    with pytest.raises(InvalidPath) as info:
        normalize("x" * 100_000)
    assert len(str(info.value)) < 300
