"""Who may open a realtime session: a hard ceiling per process, a cap per account, and no new session while
the sessions already served fall behind.

What a session costs is decode capacity, and that is not a fixed number of sessions: it depends on the
model, the device, the batching (a GPU decodes many streams' windows in one call for little more than one),
and on how much of each stream is speech. So the limit follows what the server measures:

- the final-token lag of every live session (the wall clock when a final word is sent, minus the time its
  audio ended: see `AudioClock`), summarised per session as the p95 of its last LAG_WINDOW_S;
- the busy ratio of the STT models' batch workers (engines.batching: the share of the last 10 s spent
  decoding).

The server is overloaded when the median live session's p95 lag is above `max_lag_s` AND the busiest
model is at least BUSY_SATURATED busy. Either alone misleads: a saturated worker that batches more streams
per call can still keep up (on a GPU the busy ratio nears 1 well before lag grows), and one session's lag
can be its own (a word held until a pause, a client that stalled). While overloaded, a new session is
refused with 503 and Retry-After before the WebSocket upgrade, instead of every live session's lag growing.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from server.errors import ApiError

LAG_WINDOW_S = 10.0  # a session's recent lag: its final words of the last this many seconds
BUSY_SATURATED = 0.85  # a batch worker this busy has little capacity left for one more stream
RETRY_AFTER_S = 5  # what a refused client is told to wait: lag and busy ratio are measured over ~10 s
LAG_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
REASONS = ("sessions", "account", "overload")  # why a session was refused (the /metrics label)


@dataclass(frozen=True)
class AdmissionLimits:
    max_sessions: int  # live sessions per server process, whatever the load (S7_REALTIME_MAX_SESSIONS)
    per_account: int  # live sessions per account (S7_REALTIME_MAX_SESSIONS_PER_ACCOUNT); 0: no cap
    max_lag_s: float  # overload: median live session's recent p95 final lag above this (S7_REALTIME_MAX_LAG_S); 0: off


class Refusal(ApiError):
    """A session the server will not take now; `reason` is one of REASONS."""

    def __init__(self, status: int, code: str, message: str, reason: str) -> None:
        super().__init__(status, code, message)
        self.reason = reason
        self.retry_after_s = RETRY_AFTER_S


def overload_lag(session_p95s: Sequence[float], busy: float | None, max_lag_s: float) -> float | None:
    """The median session's p95 lag when it says the server is overloaded, else None.

    `busy` is the busiest STT model's busy ratio (None: the engines report none, e.g. fakes; the lag decides).
    """
    if max_lag_s <= 0 or not session_p95s:
        return None
    median = float(np.median(np.asarray(session_p95s)))
    if median <= max_lag_s:
        return None
    if busy is not None and busy < BUSY_SATURATED:
        return None
    return median


class LagWindow:
    """One session's final-token lags of the last LAG_WINDOW_S. Its p95 is computed again only when a lag was
    added or dropped since, so that admitting a burst of connections next to hundreds of sessions stays cheap."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lags: deque[tuple[float, float]] = deque()
        self._p95: float | None = None
        self._stale = False

    def add(self, lag_s: float) -> None:
        now = self._clock()
        self._lags.append((now, lag_s))
        self._stale = True
        self._prune(now)

    def p95(self) -> float | None:
        self._prune(self._clock())
        if self._stale:
            self._stale = False
            self._p95 = float(np.percentile(np.asarray([lag for _, lag in self._lags]), 95)) if self._lags else None
        return self._p95

    def _prune(self, now: float) -> None:
        while self._lags and self._lags[0][0] < now - LAG_WINDOW_S:
            self._lags.popleft()
            self._stale = True


class AudioClock:
    """When each sample of a session's audio was due: the later of its arrival and its place on a real-time
    clock started by the first audio. A client pacing a microphone is measured from when it sent the audio;
    one pushing a file faster than real time is not blamed on the server for the audio it sent early, and
    one that stalled is measured from when its audio finally came."""

    def __init__(self, clock: Callable[[], float], rate: int) -> None:
        self._clock = clock
        self._rate = rate
        self._start: float | None = None
        self._ends: deque[tuple[int, float]] = deque()  # (end sample of a received piece, its arrival)
        self._received = 0

    def received(self, samples: int) -> None:
        if samples <= 0:
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        self._received += samples
        self._ends.append((self._received, now))

    def final_to(self, sample: int) -> None:
        """All audio before `sample` is final: no word will end there any more, its pieces are forgotten (a
        long session without words keeps nothing)."""
        while len(self._ends) > 1 and self._ends[0][0] < sample:
            self._ends.popleft()

    def lag(self, end_sample: int) -> float:
        """Seconds from when the audio up to `end_sample` was due until now (final words come in order: the
        pieces before it are forgotten)."""
        self.final_to(end_sample)
        if self._start is None or not self._ends:
            return 0.0
        arrived = self._ends[0][1]
        due = max(arrived, self._start + end_sample / self._rate)
        return max(0.0, self._clock() - due)


class Ticket:
    """One admitted connection: holds its server slot from the handshake to `release`, and an account slot
    once `bind` knows the account."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.account_id: str | None = None
        self.lags = LagWindow(admission.clock)
        self._released = False

    def bind(self, account_id: str) -> None:
        if self.account_id is None:
            self._admission._bind(self, account_id)

    def record_lag(self, lag_s: float) -> None:
        self.lags.add(lag_s)
        self._admission._observe(lag_s)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self)


class Admission:
    """Admits sessions (see the module docstring) and keeps the realtime figures /metrics shows.

    Only the event loop calls it, so it needs no lock. `busy` returns the busiest STT model's busy ratio."""

    def __init__(self, limits: AdmissionLimits, busy: Callable[[], float | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._busy = busy
        self._live: set[Ticket] = set()
        self._per_account: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self._lag_buckets = [0] * len(LAG_BUCKETS)
        self._lag_count = 0
        self._lag_sum = 0.0

    @property
    def live(self) -> int:
        return len(self._live)

    def admit(self) -> Ticket:
        """A ticket for a new connection, or Refusal (503) when the server is full or overloaded."""
        if len(self._live) >= self.limits.max_sessions:
            self._refuse("sessions")
            raise Refusal(503, "too_many_sessions",
                          f"This server runs its maximum of {self.limits.max_sessions} realtime sessions; "
                          f"retry in {RETRY_AFTER_S} s", "sessions")
        lag = overload_lag(self.session_p95s(), self._busy(), self.limits.max_lag_s)
        if lag is not None:
            self._refuse("overload")
            raise Refusal(503, "server_overloaded",
                          f"The server is overloaded (live sessions' final words lag {lag:.1f} s behind the "
                          f"audio, limit {self.limits.max_lag_s:g} s); retry in {RETRY_AFTER_S} s", "overload")
        ticket = Ticket(self)
        self._live.add(ticket)
        return ticket

    def session_p95s(self) -> list[float]:
        return [p for p in (t.lags.p95() for t in self._live) if p is not None]

    def _bind(self, ticket: Ticket, account_id: str) -> None:
        cap = self.limits.per_account
        if cap > 0 and self._per_account[account_id] >= cap:
            self._refuse("account")
            raise Refusal(429, "too_many_sessions",
                          f"This account already has {cap} realtime sessions open on this server (the limit); "
                          "close one or retry later", "account")
        self._per_account[account_id] += 1
        ticket.account_id = account_id

    def _release(self, ticket: Ticket) -> None:
        self._live.discard(ticket)
        if ticket.account_id is not None:
            self._per_account[ticket.account_id] -= 1
            if self._per_account[ticket.account_id] <= 0:
                del self._per_account[ticket.account_id]

    def _refuse(self, reason: str) -> None:
        self.refusals[reason] += 1

    def _observe(self, lag_s: float) -> None:
        self._lag_count += 1
        self._lag_sum += lag_s
        for i, bound in enumerate(LAG_BUCKETS):
            if lag_s <= bound:
                self._lag_buckets[i] += 1

    def metric_lines(self) -> Iterable[str]:
        """Prometheus lines: live sessions, refusals, the final-token lag of every word, and each live
        session's recent p95 summarised over the sessions (quantile 0.5 is what admission compares)."""
        yield "# HELP s7_realtime_sessions Live WS /stt/realtime sessions"
        yield "# TYPE s7_realtime_sessions gauge"
        yield f"s7_realtime_sessions {len(self._live)}"
        yield "# HELP s7_realtime_refusals_total Realtime sessions refused, by reason (sessions, account, overload)"
        yield "# TYPE s7_realtime_refusals_total counter"
        for reason in REASONS:
            yield f's7_realtime_refusals_total{{reason="{reason}"}} {self.refusals[reason]}'
        yield "# HELP s7_realtime_final_lag_seconds Final-token lag: sent minus when the word's audio ended"
        yield "# TYPE s7_realtime_final_lag_seconds histogram"
        for bound, n in zip(LAG_BUCKETS, self._lag_buckets, strict=True):
            yield f's7_realtime_final_lag_seconds_bucket{{le="{bound}"}} {n}'
        yield f's7_realtime_final_lag_seconds_bucket{{le="+Inf"}} {self._lag_count}'
        yield f"s7_realtime_final_lag_seconds_sum {self._lag_sum:.6f}"
        yield f"s7_realtime_final_lag_seconds_count {self._lag_count}"
        yield (f"# HELP s7_realtime_session_lag_p95_seconds Each live session's p95 final-token lag over the last "
               f"{LAG_WINDOW_S:g} s, as quantiles over the sessions")
        yield "# TYPE s7_realtime_session_lag_p95_seconds gauge"
        p95s = self.session_p95s()
        for q in (0.5, 0.9, 1.0):
            value = f"{float(np.quantile(np.asarray(p95s), q)):.3f}" if p95s else "NaN"
            yield f's7_realtime_session_lag_p95_seconds{{quantile="{q:g}"}} {value}'
