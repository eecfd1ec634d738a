"""The fuzzer's cases: reproducible from (seed, index), varied, and never aimed at kept data."""

from __future__ import annotations

from collections import Counter

from pmcluster.tools.fuzzcases import KEEP_ROOT, make_case


def test_same_seed_and_index_give_the_same_bytes() -> None:
    for index in range(200):
        assert make_case(7, index) == make_case(7, index)
    assert [make_case(7, i).payload for i in range(50)] != [
        make_case(8, i).payload for i in range(50)
    ]


def test_cases_cover_http_storm_and_raw_bytes() -> None:
    kinds = Counter(make_case(1, i).kind.split("-")[0] for i in range(2000))
    assert kinds["http"] > 1000 and kinds["storm"] > 150 and kinds["raw"] > 50
    assert not any(make_case(1, i, storm=False).kind == "storm" for i in range(500))


def test_no_case_can_touch_the_kept_data_or_delete_the_root() -> None:
    keep = KEEP_ROOT.encode()
    for index in range(5000):
        payload = make_case(3, index).payload
        assert keep not in payload
        for route in (b"/v1/path/ ", b"/v1/path/?", b"/v1/path/\r", b"/v1/pulse/ "):
            assert b"DELETE " + route not in payload
