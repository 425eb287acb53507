"""Turning scores into alerts people can act on: anomalous episodes with an onset, an end,
and a new normal when a change lasts.

Pure and per sensor: ``judge`` reads a score and its time and says what this reading means.

- A reading is *flagged* when its score reaches ``threshold``; a sensor *alerts* while at
  least ``k`` of its last ``n`` readings are flagged (with ``clear``, an alert holds while
  the score stays at least ``clear``).
- The first alerting reading is the episode's **onset**. The episode **ends** with the
  ``end_after``-th reading in a row that no longer alerts (3 by default); a reading that
  alerts again before that continues it. Readings in between are not anomalous, but a
  burst of spikes a reading or two apart is one alert, not one per spike. (Hysteresis with
  ``clear`` holds only until the first reading under it.)
- An episode still alerting ``new_normal_after`` seconds after its onset (by the readings'
  own clocks) has become the sensor's **new normal**: that reading is not anomalous, says
  ``new_normal``, and the alert ends. Whoever owns the sensor's model then adapts it.
- **Repeats are no news.** A sensor remembers the flagged scores of its episodes for
  ``repeat_horizon`` (a day). An episode that would open with a score no higher than one
  of them opens as a **repeat**: its first reading says ``repeat`` instead of ``onset``,
  its readings are anomalous as any episode's, and it has no ``end`` (its ``new_normal``,
  if it lasts, is announced). The sensor that spikes twice a day pages once a day (on
  ``onset``), and again only for something worse; the repeats stay countable.
- The **surprise** of a reading is its score, except inside an episode after its onset:
  there it is judged against the episode's strongest score so far, and scaled to stay
  below the threshold (``threshold * IN_EPISODE * score / peak``). The episode already
  told of that much; a reading that only continues it is no news. So the score peaks at
  the onset, and a threshold on it, whichever is chosen, finds each episode once.

>>> d = Decision(new_normal_after=60.0, end_after=1)
>>> state = d.new_state()
>>> [judge(d, state, s, t).event for s, t in [(0.1, 0), (0.9, 1), (0.8, 2), (0.2, 3)]]
[None, 'onset', None, 'end']
>>> [judge(Decision(), state, s, t).event for s, t in [(0.95, 4), (0.2, 5), (0.95, 6), (0.2, 7), (0.1, 8), (0.1, 9)]]
['onset', None, None, None, None, 'end']
>>> [(j.event, j.anomaly) for j in (judge(d, state, s, t) for s, t in [(0.9, 10), (0.2, 11)])]  # a repeat, no worse
[('repeat', True), (None, False)]
>>> state = d.new_state()
>>> [judge(d, state, 0.9, t).event for t in (10, 40, 70, 71)]
['onset', None, 'new_normal', 'onset']
>>> [round(judge(d, d.new_state(), s, 0).surprise, 2) for s in (0.8,)]
[0.8]
>>> state = d.new_state()
>>> [round(judge(d, state, s, t).surprise, 3) for s, t in [(0.8, 0), (0.9, 1), (0.6, 2), (0.1, 3)]]
[0.8, 0.45, 0.3, 0.1]
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

ONSET, END, NEW_NORMAL, REPEAT = "onset", "end", "new_normal", "repeat"

# Inside an episode a reading's surprise is at most this share of the threshold: below
# it, so that an episode's later readings never read as onsets of their own.
IN_EPISODE = 0.9


@dataclass(frozen=True)
class Decision:
    """How scores become alerts (``decision.*`` in the config)."""

    threshold: float = 0.5
    k: int = 1
    n: int = 1
    clear: float | None = None
    new_normal_after: float = 3600.0  # seconds an episode may last before it is the new normal (0: never)
    end_after: int = 3  # readings in a row that no longer alert before the episode ends
    record_horizon: float = 30 * 86400.0  # seconds of readings a sensor's records cover (0: none; see records)
    repeat_horizon: float = 86400.0  # seconds a flagged score is remembered: no higher one opens an announced episode (0: none)

    def new_state(self) -> EpisodeState:
        return EpisodeState(deque(maxlen=self.n))


@dataclass
class EpisodeState:
    """One sensor's recent flags and its open episode, if any."""

    recent_flags: deque[bool]
    alerting: bool = False
    onset_at: float = 0.0
    peak: float = 0.0  # the open episode's strongest score so far
    quiet: int = 0  # readings in a row of the open episode that no longer alert
    readings: int = 0  # readings of the open episode so far, its onset included
    announced: bool = False  # the open episode had an onset (a repeat opens one silently)
    # The highest flagged score of an episode in each quarter of repeat_horizon, oldest first: (start, score).
    # Tuples, replaced rather than changed, so that a copy of the list is a copy of the state.
    flagged_peaks: list[tuple[float, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Judgement:
    flagged: bool  # the score reached the threshold (whatever the episode rules make of it)
    anomaly: bool  # the sensor alerts with this reading
    event: str | None = None  # ONSET, END, NEW_NORMAL, REPEAT or None
    surprise: float = 0.0  # the reading's score as news: see the module's docstring

    @property
    def onset(self) -> bool:
        return self.event == ONSET


def judge(decision: Decision, state: EpisodeState, score: float, at: float, can_adapt: bool = True,
          new_normal_readings: int = 0) -> Judgement:
    """What a reading's ``score`` at time ``at`` means for its sensor; advances ``state``.

    ``can_adapt``: whether the sensor's model can take a new normal in (a learned one);
    a fixed model keeps alerting for as long as the change lasts. ``new_normal_readings``:
    an episode is the new normal only once it has lasted this many readings too (a sensor
    that reports hourly has not shown a new level in the one reading after its onset).
    """
    flagged = score >= decision.threshold
    state.recent_flags.append(flagged)
    alert = sum(state.recent_flags) >= decision.k
    if not alert and state.alerting and not state.quiet and decision.clear is not None:
        alert = score >= decision.clear
    if alert and not state.alerting:
        before = _remembered_peak(decision, state, at)
        if flagged:
            _remember(decision, state, score, at)
        state.alerting, state.onset_at, state.quiet, state.readings = True, at, 0, 1
        if before is not None and score <= before:  # the same trouble again, no worse: no news
            state.peak, state.announced = before, False
            return Judgement(flagged, True, REPEAT, _news(decision, score, before))
        state.peak, state.announced = score, True
        return Judgement(flagged, True, ONSET, score)
    if not state.alerting:
        return Judgement(flagged, False, None, score)
    state.readings += 1
    if not alert:
        state.quiet += 1
        if state.quiet < decision.end_after:
            return Judgement(flagged, False, None, score)
        state.alerting = False
        return Judgement(flagged, False, END if state.announced else None, score)
    state.quiet = 0
    if flagged:
        _remember(decision, state, score, at)
    state.peak = max(state.peak, score)
    surprise = _news(decision, score, state.peak)
    if (can_adapt and decision.new_normal_after and at - state.onset_at >= decision.new_normal_after
            and state.readings >= new_normal_readings):
        state.recent_flags.clear()
        state.flagged_peaks.clear()  # the change is normal now: what it scored is no yardstick
        state.alerting = False
        return Judgement(flagged, False, NEW_NORMAL, surprise)
    return Judgement(flagged, True, None, surprise)


def _news(decision: Decision, score: float, peak: float) -> float:
    """A reading's surprise against a peak already told of: below the threshold, ranked by score."""
    return min(score, decision.threshold * IN_EPISODE * score / peak) if peak > 0 else score


def _remembered_peak(decision: Decision, state: EpisodeState, at: float) -> float | None:
    """The highest flagged score of the last ``repeat_horizon`` (up to a quarter more), if any."""
    _forget(decision, state.flagged_peaks, at)
    return max((p for _, p in state.flagged_peaks), default=None)


def _forget(decision: Decision, peaks: list[tuple[float, float]], at: float) -> None:
    """Drop the quarters that ended more than ``repeat_horizon`` before ``at``: at most five stay."""
    while peaks and peaks[0][0] + decision.repeat_horizon / 4 <= at - decision.repeat_horizon:
        del peaks[0]


def _remember(decision: Decision, state: EpisodeState, score: float, at: float) -> None:
    if not decision.repeat_horizon:
        return
    peaks = state.flagged_peaks
    _forget(decision, peaks, at)  # an episode that lasts for days must not grow the list
    if peaks and at - peaks[-1][0] < decision.repeat_horizon / 4:
        start, peak = peaks[-1]
        if score > peak:
            peaks[-1] = (start, score)
    else:
        peaks.append((at, score))
