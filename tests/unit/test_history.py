"""History checker: each rule flags its hand-made history, legal histories pass, round trips."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pmcluster.tools.history import Finding, History, Op, Report, check, main

PERIOD = 3.0
TIMEOUT = 2.0


def w(path: str, v: int, start: float, end: float, outcome: str = "ok") -> Op:
    return Op(client="w", op="write", path=path, value=v, start=start, end=end, outcome=outcome)


def r(path: str, v: int | None, start: float, end: float) -> Op:
    outcome = "absent" if v is None else "ok"
    return Op(client="r", op="read", path=path, value=v, start=start, end=end, outcome=outcome)


def d(path: str, start: float, end: float, outcome: str = "ok", *, tree: bool = False) -> Op:
    kind = "delete_path" if tree else "delete"
    return Op(client="d", op=kind, path=path, start=start, end=end, outcome=outcome)


def ls(path: str, children: list[str], start: float, end: float) -> Op:
    return Op(
        client="r",
        op="list",
        path=path,
        children=tuple(children),
        start=start,
        end=end,
        outcome="ok",
    )


def run(*ops: Op) -> Report:
    return check(list(ops), period=PERIOD, request_timeout=TIMEOUT)


def only(report: Report, rule: str) -> Finding:
    """The single finding of `report`, which must belong to `rule`."""
    assert len(report.findings()) == 1, [str(f) for f in report.findings()]
    finding = report.findings()[0]
    assert finding.rule == rule
    return finding


# --- one history per rule that must be flagged -------------------------------------------


def test_stale_read_names_the_newer_acked_write() -> None:
    first, second = w("/p", 1, 0.0, 0.1), w("/p", 2, 1.0, 1.1)
    read = r("/p", 1, 2.0, 2.1)
    report = run(first, second, read)
    f = only(report, "stale")
    assert (f.path, f.op, f.evidence) == ("/p", read, second)
    assert len(report.stale) == 1 and not report.ok


def test_miss_names_the_acked_write() -> None:
    write, read = w("/p", 1, 0.0, 0.1), r("/p", None, 1.0, 1.1)
    f = only(run(write, read), "miss")
    assert (f.path, f.op, f.evidence) == ("/p", read, write)


def test_resurrection_names_the_delete() -> None:
    write, delete, read = w("/p", 1, 0.0, 0.1), d("/p", 1.0, 1.1), r("/p", 1, 2.0, 2.1)
    f = only(run(write, delete, read), "resurrection")
    assert (f.path, f.op, f.evidence) == ("/p", read, delete)


def test_age_over_period_plus_timeout_is_flagged_with_its_value() -> None:
    # The newer write is still in flight when the read starts: not stale, but 8 s old.
    old, slow = w("/p", 1, 0.0, 0.1), w("/p", 2, 3.0, 9.0)
    early, late = r("/p", 1, 1.0, 1.1), r("/p", 1, 8.0, 8.2)
    report = run(old, slow, early, late)
    f = only(report, "age")
    assert (f.path, f.op, f.evidence) == ("/p", late, old)
    assert report.ages == {"/p": pytest.approx(8.0)}
    assert report.max_age == pytest.approx(8.0)


def test_age_at_the_limit_passes_and_is_the_max_over_reads() -> None:
    ops = [w("/p", 1, 0.0, 0.1), r("/p", 1, 2.0, 2.1), r("/p", 1, 5.0, 5.1)]
    ops += [w("/q", 7, 10.0, 10.1), r("/q", 7, 11.5, 11.6)]
    report = run(*ops)
    assert report.ok
    assert report.ages == {"/p": pytest.approx(5.0), "/q": pytest.approx(1.5)}


def test_age_is_measured_from_the_writers_next_write() -> None:
    """A late writer (next write 4 s after, not 3) moves the limit by its lateness: a read
    1.9 s after that next write began passes, 2.1 s after fails (timeout 2 s)."""
    ops = [w("/p", 1, 0.0, 0.1), w("/p", 2, 4.0, 9.0, outcome="timeout")]
    assert run(*ops, r("/p", 1, 5.9, 6.0)).ok
    late = r("/p", 1, 6.1, 6.2)
    f = only(run(*ops, late), "age")
    assert (f.op, f.evidence) == (late, ops[0])
    assert "6.100 s old > 6.000 s" in f.detail


def test_an_early_next_write_tightens_the_age_limit() -> None:
    """The next write began 1 s after: 3.5 s after v1 (2.5 s after it) v1 is too old, though
    under period + timeout."""
    ops = [w("/p", 1, 0.0, 0.1), w("/p", 2, 1.0, 4.0, outcome="error"), r("/p", 1, 3.5, 3.6)]
    assert only(run(*ops), "age").op == ops[2]


def test_invented_value_and_read_from_the_future_are_flagged() -> None:
    never = r("/p", 42, 1.0, 1.1)
    assert only(run(w("/p", 1, 0.0, 0.1), never), "invented").op == never
    future = r("/p", 2, 1.0, 1.1)
    f = only(run(w("/p", 2, 2.0, 2.1), future), "invented")
    assert f.op == future


# --- histories that must pass ---------------------------------------------------------------


@pytest.mark.parametrize("seen", [1, 2])
def test_read_concurrent_with_write_may_return_either_value(seen: int) -> None:
    assert run(w("/p", 1, 0.0, 0.1), w("/p", 2, 1.0, 2.0), r("/p", seen, 1.5, 1.6)).ok


def test_read_concurrent_with_first_write_may_be_absent() -> None:
    assert run(w("/p", 1, 1.0, 2.0), r("/p", None, 1.5, 2.5)).ok


def test_read_of_older_value_concurrent_with_newer_write_passes() -> None:
    assert run(w("/p", 1, 0.0, 0.1), w("/p", 2, 1.0, 3.0), r("/p", 1, 2.0, 2.5)).ok


def test_newer_value_than_any_acked_write_passes() -> None:
    assert run(w("/p", 1, 0.0, 0.1), w("/p", 3, 0.5, 0.6), r("/p", 3, 1.0, 1.1)).ok


@pytest.mark.parametrize("delete_at", [(1.0, 1.1), (1.5, 2.5), (0.05, 3.0)])
def test_absent_after_or_during_a_delete_passes(delete_at: tuple[float, float]) -> None:
    assert run(w("/p", 1, 0.0, 0.1), d("/p", *delete_at), r("/p", None, 2.0, 2.1)).ok


@pytest.mark.parametrize("outcome", ["timeout", "error"])
def test_failed_write_may_or_may_not_have_taken_effect(outcome: str) -> None:
    failed = w("/p", 2, 1.0, 1.5, outcome)
    assert run(w("/p", 1, 0.0, 0.1), failed, r("/p", 2, 2.0, 2.1)).ok
    assert run(w("/p", 1, 0.0, 0.1), failed, r("/p", 1, 2.0, 2.1)).ok
    assert run(failed, r("/p", None, 2.0, 2.1)).ok
    # ... even when an acked delete followed: the failed write may land after it.
    assert run(failed, d("/p", 2.0, 2.1), r("/p", 2, 3.0, 3.1)).ok


def test_write_concurrent_with_delete_may_survive_it() -> None:
    assert run(w("/p", 1, 1.0, 2.0), d("/p", 1.5, 1.6), r("/p", 1, 3.0, 3.1)).ok
    assert run(w("/p", 1, 1.0, 2.0), d("/p", 1.5, 1.6), r("/p", None, 3.0, 3.1)).ok


def test_indeterminate_delete_may_take_effect_late() -> None:
    assert run(w("/p", 1, 0.0, 0.1), d("/p", 1.0, 1.1, "timeout"), r("/p", None, 5.0, 5.1)).ok


def test_failed_reads_and_listings_are_ignored() -> None:
    bad = Op(client="r", op="read", path="/p", value=None, start=1.0, end=3.0, outcome="timeout")
    bad_list = Op(client="r", op="list", path="/", children=("x",), start=1, end=2, outcome="error")
    assert run(w("/p", 1, 0.0, 0.1), bad, bad_list).ok


# --- deletes and their reach ----------------------------------------------------------------


def test_delete_before_the_write_or_after_the_read_does_not_excuse_a_miss() -> None:
    write, read = w("/p", 1, 1.0, 1.1), r("/p", None, 2.0, 2.1)
    assert only(run(d("/p", 0.0, 0.5), write, read), "miss").evidence == write
    assert only(run(write, read, d("/p", 3.0, 3.1)), "miss").evidence == write


def test_write_after_delete_makes_absent_a_miss_again() -> None:
    again = w("/p", 2, 2.0, 2.1)
    ops = [w("/p", 1, 0.0, 0.1), d("/p", 1.0, 1.1), again, r("/p", None, 3.0, 3.1)]
    assert only(run(*ops), "miss").evidence == again


def test_delete_path_covers_children_component_wise() -> None:
    write = w("/a/b", 1, 0.0, 0.1)
    drop = d("/a", 1.0, 1.1, tree=True)
    assert run(write, drop, r("/a/b", None, 2.0, 2.1)).ok
    f = only(run(write, drop, r("/a/b", 1, 2.0, 2.1)), "resurrection")
    assert (f.path, f.evidence) == ("/a/b", drop)
    # /a/bc is not under /a/b: deleting /a/b leaves it alone.
    other = w("/a/bc", 1, 0.0, 0.1)
    assert only(run(other, d("/a/b", 1.0, 1.1, tree=True), r("/a/bc", None, 2, 3)), "miss")
    # An exact delete of /a does not touch /a/b.
    assert only(run(write, d("/a", 1.0, 1.1), r("/a/b", None, 2.0, 2.1)), "miss")
    # The root covers everything.
    assert run(write, d("/", 1.0, 1.1, tree=True), r("/a/b", None, 2.0, 2.1)).ok


def test_old_value_after_delete_and_rewrite_is_stale_and_resurrected() -> None:
    delete, rewrite = d("/p", 4.0, 5.0), w("/p", 3, 6.0, 7.0)
    ops = [w("/p", 1, 0.0, 1.0), w("/p", 2, 2.0, 3.0), delete, rewrite, r("/p", 1, 8.0, 9.0)]
    report = run(*ops)
    assert [f.evidence for f in report.stale] == [rewrite]
    assert [f.evidence for f in report.resurrections] == [delete]
    assert not report.misses and not report.invented


# --- listings -------------------------------------------------------------------------------


def test_listing_shows_a_deleted_subtree() -> None:
    drop = d("/wb/t1", 1.0, 1.1, tree=True)
    listing = ls("/wb", ["t1", "t2"], 2.0, 2.1)
    ops = [w("/wb/t1/n1", 1, 0.0, 0.1), w("/wb/t2/n1", 2, 0.0, 0.1), drop, listing]
    f = only(run(*ops), "resurrection")
    assert (f.path, f.op, f.evidence) == ("/wb/t1", listing, drop)


def test_listing_after_rewrite_or_concurrent_write_passes() -> None:
    base = [w("/wb/t1/n1", 1, 0.0, 0.1), d("/wb", 1.0, 2.0, tree=True)]
    assert run(*base, w("/wb/t1/n2", 2, 1.5, 1.6), ls("/wb", ["t1"], 3.0, 3.1)).ok
    assert run(*base, w("/wb/t1/n1", 2, 2.5, 4.0), ls("/wb", ["t1"], 3.0, 3.1)).ok
    assert run(*base, w("/wb/t1/n1", 2, 2.5, 2.6, "timeout"), ls("/wb", ["t1"], 3.0, 3.1)).ok
    # A write that started only after the listing ended cannot explain it.
    late = [*base, w("/wb/t1/n1", 2, 3.5, 3.6), ls("/wb", ["t1"], 3.0, 3.1)]
    assert only(run(*late), "resurrection").path == "/wb/t1"


def test_listing_after_exact_delete_of_a_leaf_is_flagged() -> None:
    drop = d("/wb/t1/n1", 1.0, 1.1)
    listing = ls("/wb/t1", ["n1"], 2.0, 2.1)
    f = only(run(w("/wb/t1/n1", 1, 0.0, 0.1), drop, listing), "resurrection")
    assert (f.path, f.evidence) == ("/wb/t1/n1", drop)
    # An exact delete of /wb/t1 leaves the keys under it, so t1 still lists.
    assert run(w("/wb/t1/n1", 1, 0.0, 0.1), d("/wb/t1", 1.0, 1.1), ls("/wb", ["t1"], 2, 3)).ok


def test_listing_of_a_never_written_child_is_invented() -> None:
    f = only(run(w("/wb/t1/n1", 1, 0.0, 0.1), ls("/", ["wb", "zz"], 1.0, 1.1)), "invented")
    assert f.path == "/zz"


# --- verdict, recorder, JSON lines, CLI -------------------------------------------------------


def test_verdict_lines() -> None:
    good = run(w("/p", 1, 0.0, 0.1), r("/p", 1, 1.25, 1.3))
    assert good.verdict_line() == "OK: 2 ops, 0 misses, 0 stale, 0 resurrections, max age 1.250 s"
    bad = run(w("/p", 1, 0.0, 0.1), r("/p", None, 1.0, 1.1), r("/q", 5, 1.0, 1.1))
    assert bad.verdict_line() == (
        "FAILED: 3 ops, 1 misses, 0 stale, 0 resurrections, 1 invented, max age 0.000 s"
    )
    old = run(w("/p", 1, 0.0, 0.1), r("/p", 1, 9.0, 9.1))
    assert old.verdict_line().endswith("max age 9.000 s (over 5.000 s on 1 paths)")
    assert old.verdict_line().startswith("FAILED: 2 ops, 0 misses")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


def test_begin_finish_and_context_manager_record_outcomes() -> None:
    history = History(clock=FakeClock())
    pending = history.begin("c1", "read", "/p")
    op = pending.finish("ok", value=7)
    assert (op.value, op.start, op.end, op.outcome) == (7, 100.5, 101.0, "ok")
    with history.begin("c1", "write", "/p", value=8):
        pass
    with pytest.raises(TimeoutError), history.begin("c1", "write", "/p", value=9):
        raise TimeoutError
    with pytest.raises(KeyError), history.begin("c1", "delete", "/p"):
        raise KeyError("x")
    with history.begin("c1", "list", "/") as listing:
        listing.finish("ok", children=["p"])
    outcomes = [(o.op, o.value, o.outcome) for o in history.ops]
    assert outcomes == [
        ("read", 7, "ok"),
        ("write", 8, "ok"),
        ("write", 9, "timeout"),
        ("delete", None, "error"),
        ("list", None, "ok"),
    ]
    assert history.ops[-1].children == ("p",)
    with pytest.raises(RuntimeError):
        pending.finish("ok")
    with pytest.raises(ValueError):
        history.begin("c1", "put", "/p")


def test_ops_must_be_well_formed() -> None:
    with pytest.raises(ValueError):
        Op(client="c", op="read", path="/p", start=2.0, end=1.0, outcome="ok")
    with pytest.raises(ValueError):
        Op(client="c", op="read", path="/p", start=1.0, end=2.0, outcome="maybe")


def test_recording_from_threads_and_tasks_keeps_every_op() -> None:
    history = History()

    def writer(n: int) -> None:
        for i in range(500):
            with history.begin(f"t{n}", "write", f"/t{n}", value=i):
                pass

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()

    async def reader(n: int) -> None:
        for _ in range(100):
            with history.begin(f"a{n}", "read", "/x") as p:
                await asyncio.sleep(0)
                p.finish("absent")

    async def readers() -> None:
        await asyncio.gather(*(reader(n) for n in range(5)))

    asyncio.run(readers())
    for t in threads:
        t.join()
    assert len(history.ops) == 4 * 500 + 5 * 100
    assert check(history, period=PERIOD, request_timeout=TIMEOUT).ok


def test_jsonl_round_trip(tmp_path: Path) -> None:
    history = History()
    history.record(
        "w1", "write", "/wb/t(1)+$[/n-1.2", value=2**62, start=0.1, end=0.2, outcome="ok"
    )
    history.record(
        "r1", "list", "/wb", children=["t(1)+$[", "ü"], start=0.3, end=1 / 3, outcome="ok"
    )
    history.record("r1", "read", "/wb/x", start=1.0, end=1.5, outcome="absent")
    history.record("d1", "delete_path", "/", start=2.0, end=9.0, outcome="timeout")
    history.record("w2", "write", "/wb/s", value=7, start=9.0, end=9.5, outcome="ok", late=True)
    out = tmp_path / "h.jsonl"
    history.dump_jsonl(out)
    assert len(out.read_text(encoding="utf-8").splitlines()) == 5
    assert History.load_jsonl(out).ops == history.ops


def late(op: Op) -> Op:
    """`op` with an attempt given up on that carried no version (`Op.late`)."""
    return dataclasses.replace(op, late=True)


def test_a_late_unversioned_write_may_land_after_newer_writes() -> None:
    """Storm's protocol carries no version: a given-up attempt of write 1 that lands after
    write 2 is stored as the newest, so reading it is no stale read (nor too old)."""
    first, second = late(w("/p", 1, 0.0, 1.2)), w("/p", 2, 1.5, 1.6)
    assert run(first, second, r("/p", 1, 5.0, 5.1)).ok
    # Without `late` the same history is a stale read: only `late` excuses it.
    strict = run(dataclasses.replace(first, late=False), second, r("/p", 1, 5.0, 5.1))
    assert [f.evidence for f in strict.stale] == [second]
    # Only while the given-up attempt could still land: a newer write that started after
    # that makes the old value stale again.
    from pmcluster.tools.history.record import LATE_SECS

    later = w("/p", 3, 1.2 + LATE_SECS + 1, 1.2 + LATE_SECS + 1.1)
    stale = run(first, second, later, r("/p", 1, LATE_SECS + 5, LATE_SECS + 5.1))
    assert [f.evidence for f in stale.stale] == [later]
    # A late write is no excuse for another value: v2 read after an acked v3 is stale.
    third = w("/p", 3, 2.0, 2.1)
    assert [f.evidence for f in run(first, second, third, r("/p", 2, 5.0, 5.1)).stale] == [third]


def test_a_late_write_or_delete_is_no_resurrection_and_may_erase() -> None:
    write, delete = late(w("/t/p", 1, 0.0, 0.5)), d("/t", 1.0, 1.1, tree=True)
    read = r("/t/p", 1, 3.0, 3.1)
    assert run(write, delete, read).ok
    strict = run(dataclasses.replace(write, late=False), delete, read)
    assert [f.evidence for f in strict.resurrections] == [delete]
    # A late delete may erase a write that ended before it did: absent is no miss then.
    rewrite, gone = w("/t/p", 2, 2.0, 2.1), r("/t/p", None, 3.0, 3.1)
    assert run(rewrite, late(d("/t", 1.5, 1.6, tree=True)), gone).ok
    assert only(run(rewrite, d("/t", 1.5, 1.6, tree=True), gone), "miss").evidence == rewrite


def test_extend_appends_another_history_in_order() -> None:
    """How the soak merges its writer processes' histories into its own."""
    mine = History([w("/p", 1, 0.0, 0.1)])
    theirs = History([w("/q", 2, 0.2, 0.3), w("/p", 3, 0.4, 0.5)])
    mine.extend(theirs.ops)
    assert mine.ops == [w("/p", 1, 0.0, 0.1), *theirs.ops]


def test_load_names_the_bad_line(tmp_path: Path) -> None:
    out = tmp_path / "h.jsonl"
    History([w("/p", 1, 0.0, 0.1)]).dump_jsonl(out)
    with out.open("a", encoding="utf-8") as f:
        f.write("\n" + '{"client":"c","op":"read","path":"/p","value":"x","start":1,"end":2}\n')
    with pytest.raises(ValueError, match=r"h\.jsonl:3: value must be an integer"):
        History.load_jsonl(out)


def test_cli_verdict_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    History([w("/p", 1, 0.0, 0.1), r("/p", 1, 1.0, 1.1)]).dump_jsonl(good)
    History([w("/p", 1, 0.0, 0.1), r("/p", None, 1.0, 1.1)]).dump_jsonl(bad)
    assert main([str(good), "--period", "3", "--timeout", "2"]) == 0
    assert capsys.readouterr().out.startswith("OK: 2 ops")
    assert main([str(bad), "--period", "3", "--timeout", "2", "-v"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("miss /p: ") and lines[-1].startswith("FAILED: 2 ops, 1 misses")
    assert main([str(tmp_path / "none.jsonl"), "--period", "3", "--timeout", "2"]) == 2
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pmcluster.tools.history",
            str(bad),
            "--period",
            "3",
            "--timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1 and proc.stdout.startswith("FAILED: ")


# --- differential test against the definitions, read literally --------------------------------


def _covers(delete: Op, path: str) -> bool:
    if delete.op == "delete":
        return delete.path == path
    root = delete.path
    return root == "/" or path == root or path.startswith(root + "/")


def _acked(o: Op) -> bool:
    """The docstring's definition, restated here (not `Op.acked`, which is under test)."""
    return o.outcome in (("ok", "absent") if o.op in ("delete", "delete_path") else ("ok",))


def _effect_end(o: Op) -> float:
    return o.end if _acked(o) else float("inf")


def _reference(ops: list[Op]) -> tuple[set[tuple[str, str, Op]], dict[Op, float]]:
    """Every rule of the module docstring as a direct O(n^2) loop, using nothing of the checker
    but the `Op` record's fields: the findings, and per read its age's excess over its limit
    (the age rule flags a path's worst read when that excess is positive)."""
    writes = [o for o in ops if o.op == "write"]
    deletes = [o for o in ops if o.op in ("delete", "delete_path")]
    found: set[tuple[str, str, Op]] = set()
    excess: dict[Op, float] = {}
    for rd in (o for o in ops if o.op == "read" and o.outcome in ("ok", "absent")):
        p = rd.path
        cover = [x for x in deletes if _covers(x, p)]
        live = [
            x
            for x in writes
            if x.path == p
            and _acked(x)
            and x.end < rd.start
            and not any(_effect_end(dl) >= x.start and dl.start <= rd.end for dl in cover)
        ]
        got = rd.value if rd.outcome == "ok" else None
        if got is None:
            if live:
                found.add(("miss", p, rd))
            continue
        if any(x.value is not None and x.value > got for x in live):
            found.add(("stale", p, rd))
        origins = [x for x in writes if x.path == p and x.value == got and x.start <= rd.end]
        if not origins:
            found.add(("invented", p, rd))
            continue
        latest = max(_effect_end(x) for x in origins)
        if any(_acked(dl) and dl.end < rd.start and dl.start > latest for dl in cover):
            found.add(("resurrection", p, rd))
        origin = max(origins, key=lambda x: x.start)
        later = [x.start for x in writes if x.path == p and x.start > origin.start]
        allowed = (min(later) - origin.start if later else PERIOD) + TIMEOUT
        excess[rd] = rd.start - origin.start - allowed
    for lst in (o for o in ops if o.op == "list" and o.outcome == "ok"):
        for name in lst.children or ():
            s = "/" + name if lst.path == "/" else f"{lst.path}/{name}"
            under = [x for x in writes if x.path == s or x.path.startswith(s + "/")]
            leaf = all(x.path == s for x in under)
            seen = [x for x in under if x.start <= lst.end]
            if not seen:
                found.add(("invented", s, lst))
                continue
            cover = [
                x
                for x in deletes
                if _acked(x)
                and x.end < lst.start
                and (_covers(x, s) if (x.op == "delete_path" or leaf) else False)
            ]
            if any(all(_effect_end(x) < dl.start for x in seen) for dl in cover):
                found.add(("resurrection", s, lst))
    return found, excess


def _random_history(rng: random.Random) -> list[Op]:
    keys = ["/a", "/a/b", "/a/c", "/a/b/x", "/b"]
    ops: list[Op] = []
    written: dict[str, list[int]] = {k: [] for k in keys}
    version = 0
    coarse = rng.random() < 0.5  # whole seconds: many ties, to test the strict comparisons
    for _ in range(rng.randint(10, 70)):
        if coarse:
            start = float(rng.randint(0, 12))
            end = start + rng.choice([0, 0, 1, 2, 3])
        else:
            start = rng.uniform(0.0, 20.0)
            end = start + rng.choice([0.0, rng.uniform(0.0, 0.5), rng.uniform(0.0, 4.0)])
        kind = rng.choices(["write", "read", "list", "delete", "delete_path"], [5, 6, 2, 1, 1])[0]
        outcome = rng.choices(["ok", "timeout", "error"], [8, 1, 1])[0]
        key = rng.choice(keys)
        if kind == "write":
            version += 1
            written[key].append(version)
            ops.append(w(key, version, start, end, outcome))
        elif kind == "read":
            v = rng.choice([None, 999, *written[key], *written[key]])
            ops.append(r(key, v, start, end))
        elif kind == "list":
            parent, names = rng.choice([("/", ["a", "b"]), ("/a", ["b", "c"]), ("/a/b", ["x"])])
            ops.append(ls(parent, rng.sample(names, rng.randint(0, len(names))), start, end))
        else:
            where = rng.choice([*keys, "/"]) if kind == "delete_path" else key
            ops.append(d(where, start, end, rng.choice([outcome, "absent"]), tree=kind != "delete"))
    return [dataclasses.replace(o, client=f"c{i}") for i, o in enumerate(ops)]  # all distinct


@pytest.mark.parametrize("seed", range(300))
def test_checker_agrees_with_literal_definitions(seed: int) -> None:
    ops = _random_history(random.Random(seed))
    report = run(*ops)
    got = [(f.rule, f.path, f.op) for f in report.findings() if f.rule != "age"]
    assert len(got) == len(set(got))
    found, excess = _reference(ops)
    assert set(got) == found
    worst: dict[str, float] = {}
    for rd, e in excess.items():
        worst[rd.path] = max(e, worst.get(rd.path, -math.inf))
    flagged = {f.path: f.op for f in report.age}
    assert set(flagged) == {p for p, e in worst.items() if e > 0}
    for path, rd in flagged.items():  # the evidence is a worst read (ties: any of them)
        assert excess[rd] == pytest.approx(worst[path])
