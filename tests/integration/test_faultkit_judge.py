"""The fault suites' judge (`faultkit.judge_run`) on hand-made histories: no processes start.

It lives beside faultkit because it tests exactly the bounds the fault suites apply.
"""

from __future__ import annotations

from faultkit import HTTP_READ_BOUND, PERIOD, READ_BOUND, TIMEOUT, fault_window, judge_run

from pmcluster.tools.history import History, Op, check

PATH = "/workerbeats/topo-0/node-000-6700"


def _op(client: str, kind: str, start: float, end: float, outcome: str, v: int | None) -> Op:
    return Op(client=client, op=kind, path=PATH, value=v, start=start, end=end, outcome=outcome)


def _healthy_until(t_end: float) -> list[Op]:
    """A writer every period and two readers reading every 10 ms, all fine, up to `t_end`."""
    ops: list[Op] = []
    t = 0.0
    while t < t_end:
        ops.append(_op("writer-client", "write", t, t + 0.002, "ok", int(t * 1000) + 1))
        t += PERIOD
    for reader in ("reader0-client", "reader1-http"):
        t = 0.001
        while t < t_end:
            version = int((t - 0.002) // PERIOD * PERIOD * 1000) + 1 if t > 0.002 else None
            outcome = "ok" if version is not None else "absent"
            ops.append(_op(reader, "read", t, t + 0.001, outcome, version))
            t += 0.01
    return ops


def _stall_and_fail() -> tuple[History, float, float]:
    """The issue's history: both readers stall 3.5 s across a SIGSTOP, 300 reads after fail."""
    stopped, resumed = 2.0, 5.5
    ops = [o for o in _healthy_until(stopped) if o.op == "write" or o.end < stopped - 0.01]
    for reader in ("reader0-client", "reader1-http"):
        ops.append(_op(reader, "read", stopped - 0.005, resumed - 0.005, "timeout", None))
    t = resumed
    for i in range(300):
        ops.append(
            _op(("reader0-client", "reader1-http")[i % 2], "read", t, t + 0.002, "error", None)
        )
        t += 0.003
    return History(ops), stopped, resumed


def _judge(history: History, since: float, until: float) -> list[str]:
    report = check(history, period=PERIOD, request_timeout=TIMEOUT)
    return judge_run(history, report, fault_window("SIGSTOP", since, until))


def test_the_stall_and_fail_history_fails_on_every_count() -> None:
    history, stopped, resumed = _stall_and_fail()
    problems = _judge(history, stopped, resumed)
    text = "\n".join(problems)
    assert "whole run: 302/" in text  # the failed reads over the run
    for kind in ("client", "http"):  # the stalled reads overlap the window
        assert f"SIGSTOP ({kind}): 1/1 reads failed" in text
        assert f"SIGSTOP ({kind}): slowest read 3.500 s" in text


def test_a_window_without_reads_fails() -> None:
    history = History(_healthy_until(2.0))
    problems = _judge(history, 3.0, 4.0)
    assert problems == [
        "SIGSTOP (client): 0 reads overlap the window, need 1",
        "SIGSTOP (http): 0 reads overlap the window, need 1",
    ]


def test_a_read_just_past_the_bound_fails_and_one_within_it_passes() -> None:
    ops = _healthy_until(4.0)
    slow = _op("reader0-client", "read", 1.9, 1.9 + READ_BOUND - 0.01, "ok", 1501)
    assert _judge(History([*ops, slow]), 2.0, 3.0) == []
    slower = _op("reader0-client", "read", 1.9, 1.9 + READ_BOUND + 0.01, "ok", 1501)
    problems = _judge(History([*ops, slower]), 2.0, 3.0)
    assert len(problems) == 1 and "SIGSTOP (client): slowest read" in problems[0]


def test_plain_http_reads_may_take_two_timeouts_not_more() -> None:
    ops = _healthy_until(4.0)
    slow = _op("reader1-http", "read", 1.9, 1.9 + HTTP_READ_BOUND - 0.01, "ok", 1501)
    assert _judge(History([*ops, slow]), 2.0, 3.0) == []
    slower = _op("reader1-http", "read", 1.9, 1.9 + HTTP_READ_BOUND + 0.01, "ok", 1501)
    problems = _judge(History([*ops, slower]), 2.0, 3.0)
    assert len(problems) == 1 and "SIGSTOP (http): slowest read" in problems[0]


def test_a_healthy_run_passes() -> None:
    history = History(_healthy_until(4.0))
    assert _judge(history, 2.0, 3.0) == []
