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
- The **surprise** of a reading is its score, except inside an episode after its onset:
  there it is judged against the episode's strongest score so far, and scaled to stay
  below the threshold (``threshold * IN_EPISODE * score / peak``). The episode already
  told of that much; a reading that only continues it is no news. So the score peaks at
  the onset, and a threshold on it, whichever is chosen, finds each episode once.

>>> d = Decision(new_normal_after=60.0, end_after=1)
>>> state = d.new_state()
>>> [judge(d, state, s, t).event for s, t in [(0.1, 0), (0.9, 1), (0.8, 2), (0.2, 3)]]
[None, 'onset', None, 'end']
>>> [judge(Decision(), state, s, t).event for s, t in [(0.9, 4), (0.2, 5), (0.9, 6), (0.2, 7), (0.1, 8), (0.1, 9)]]
['onset', None, None, None, None, 'end']
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
from dataclasses import dataclass

ONSET, END, NEW_NORMAL = "onset", "end", "new_normal"

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


@dataclass(frozen=True)
class Judgement:
    flagged: bool  # the score reached the threshold (whatever the episode rules make of it)
    anomaly: bool  # the sensor alerts with this reading
    event: str | None = None  # ONSET, END, NEW_NORMAL or None
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
        state.alerting, state.onset_at, state.peak, state.quiet, state.readings = True, at, score, 0, 1
        return Judgement(flagged, True, ONSET, score)
    if not state.alerting:
        return Judgement(flagged, False, None, score)
    state.readings += 1
    if not alert:
        state.quiet += 1
        if state.quiet < decision.end_after:
            return Judgement(flagged, False, None, score)
        state.alerting = False
        return Judgement(flagged, False, END, score)
    state.quiet = 0
    state.peak = max(state.peak, score)
    surprise = min(score, decision.threshold * IN_EPISODE * score / state.peak) if state.peak > 0 else score
    if (can_adapt and decision.new_normal_after and at - state.onset_at >= decision.new_normal_after
            and state.readings >= new_normal_readings):
        state.recent_flags.clear()
        state.alerting = False
        return Judgement(flagged, False, NEW_NORMAL, surprise)
    return Judgement(flagged, True, None, surprise)
