"""Realtime admission as pure decisions (server/realtime_admission.py): the hard ceiling, the per-account cap,
overload measured by live sessions' lag and the model's busy ratio, and the audio clock lag is measured on.
test_realtime_server runs the same rules through the WebSocket route (refusals before the upgrade)."""

from __future__ import annotations

import pytest

from server.realtime_admission import (
    BUSY_SATURATED,
    LAG_WINDOW_S,
    Admission,
    AdmissionLimits,
    AudioClock,
    Refusal,
    overload_lag,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_overload_needs_both_lag_and_a_saturated_model() -> None:
    lagging = [2.5, 3.0, 0.4]  # the median session is 2.5 s behind
    assert overload_lag(lagging, busy=0.99, max_lag_s=2.0) == 2.5
    assert overload_lag(lagging, busy=BUSY_SATURATED - 0.1, max_lag_s=2.0) is None  # capacity left: its own lag
    assert overload_lag(lagging, busy=None, max_lag_s=2.0) == 2.5  # no engine reports a ratio: lag decides
    assert overload_lag([0.4, 0.5, 9.0], busy=1.0, max_lag_s=2.0) is None  # one session's lag is its own
    assert overload_lag([], busy=1.0, max_lag_s=2.0) is None
    assert overload_lag(lagging, busy=1.0, max_lag_s=0.0) is None  # turned off


def test_ceiling_account_cap_and_release() -> None:
    admission = Admission(AdmissionLimits(max_sessions=3, per_account=2, max_lag_s=2.0), busy=lambda: 0.0)
    a1, a2 = admission.admit(), admission.admit()
    a1.bind("a")
    a2.bind("a")
    third = admission.admit()
    with pytest.raises(Refusal) as capped:
        third.bind("a")
    assert capped.value.status == 429 and capped.value.retry_after_s > 0
    third.bind("b")
    with pytest.raises(Refusal) as full:
        admission.admit()
    assert full.value.status == 503 and full.value.code == "too_many_sessions"
    a1.release()
    a1.release()  # twice is once
    assert admission.live == 2
    again = admission.admit()
    again.bind("a")  # the account's slot came back with the session
    assert dict(admission.refusals) == {"account": 1, "sessions": 1}


def test_lagging_sessions_on_a_busy_model_refuse_new_ones_until_the_lag_is_old() -> None:
    clock = Clock()
    busy = {"ratio": 1.0}
    admission = Admission(AdmissionLimits(100, 0, max_lag_s=1.0), busy=lambda: busy["ratio"], clock=clock)
    sessions = [admission.admit() for _ in range(3)]
    for lag in (0.2, 0.3, 0.4, 3.0):  # p95 of each session's words
        for s in sessions[:2]:
            s.record_lag(lag)
    with pytest.raises(Refusal) as refused:
        admission.admit()
    assert refused.value.status == 503 and refused.value.code == "server_overloaded"
    busy["ratio"] = 0.5
    admission.admit().release()
    busy["ratio"] = 1.0
    clock.now += LAG_WINDOW_S + 1  # the lag is no longer recent
    admission.admit().release()
    lines = "\n".join(admission.metric_lines())
    assert "s7_realtime_sessions 3" in lines and 's7_realtime_refusals_total{reason="overload"} 1' in lines
    assert "s7_realtime_final_lag_seconds_count 8" in lines


def test_audio_clock_measures_from_when_audio_was_due() -> None:
    clock = Clock()
    audio = AudioClock(clock, rate=10)  # 10 samples a second keeps the arithmetic readable
    audio.received(10)  # the first second arrives at 100.0: the audio clock starts
    clock.now = 101.0
    audio.received(10)  # the next one at 101.0
    clock.now = 101.5
    assert audio.lag(10) == pytest.approx(0.5)  # the end of the first second was due at 100 + 1
    assert audio.lag(20) == 0.0  # the second's end is due at 102: never a negative lag
    # A client that pushes a minute at once is not owed real time for audio it sent early.
    clock.now = 102.0
    audio.received(600)
    assert audio.lag(300) == 0.0  # sample 300 plays at 100 + 30 s
    clock.now = 140.0
    assert audio.lag(320) == pytest.approx(8.0)
    # One that stalls is measured from when its audio finally came.
    clock.now = 200.0
    audio.received(10)
    clock.now = 200.25
    assert audio.lag(630) == pytest.approx(0.25)
