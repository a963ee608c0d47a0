"""The blocking watchdog: an orchestrator episode that runs too long is reported, once.

Orchestrator code runs on its partition's batch thread, so code that blocks
(``time.sleep``, a network call) stalls every instance of the partition, and nothing
says why. Each partition core has an ``EpisodeWatch`` that its episode step marks as an
episode begins and ends (a tuple and a few attribute reads and writes: it runs for every
episode). One daemon thread per process, started with the first watch, looks at the
watches about once per threshold while episodes run and otherwise sleeps on an event
that the next episode sets. An episode still running ``blocking_episode_warning_s``
after it began is reported once, with the code's stack (``sys._current_frames``):

- a warning in the log naming hub, partition, instance, orchestration, seconds so far
  and the stack;
- the partition's ``blocking_episodes`` counter (``duraray_blocking_episodes_total``);
- a ``BlockingReport`` per instance (the latest), kept in memory for the last
  ``MAX_REPORTS`` instances: ``Client.get_blocking_report`` and the dashboard's instance
  page show it. Reports do not survive a restart of the partition.

The watch only reads: a report never stops the batch or changes the episode's outcome.
Episode times come from the core's ``Clock.monotonic``, so a simulated clock decides
what counts as long.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
import weakref
from collections import OrderedDict
from datetime import datetime
from typing import Any

import structlog

from duraray.runtime.engine.clock import Clock
from duraray.runtime.engine.records import BlockingReport

log = structlog.get_logger("duraray.watchdog")

#: Instances whose latest report a partition keeps (the oldest reported goes first).
MAX_REPORTS = 100
#: Frames of a stack kept in a report (the innermost ones).
MAX_FRAMES = 40
#: The shortest pause of the monitor between two looks while an episode runs (seconds):
#: however small the threshold, it looks at most ten times a second.
MIN_LOOK_S = 0.1

#: The duraray package (this file is duraray/runtime/engine/watchdog.py).
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep
#: Modules inside the package that are user code all the same (the sample app).
_USER_MODULES = frozenset({os.path.join(_OWN_DIR, "demo.py")})


#: An episode as ``EpisodeWatch.begin`` marks it: (instance id, orchestration name, thread
#: id, monotonic start). A tuple: it is made for every episode, and compared by identity.
_Episode = tuple[str, str, int, float]


class _Report:
    """What the monitor found about one episode (``BlockingReport`` adds its end)."""

    __slots__ = ("ended", "episode", "reported_at", "seconds", "stack")

    def __init__(self, episode: _Episode, reported_at: datetime, seconds: float) -> None:
        self.episode = episode
        self.reported_at = reported_at
        self.seconds = seconds
        self.stack = ""
        #: Monotonic time the episode ended (set by ``end`` or, if it ended while the
        #: report was being made, by the monitor).
        self.ended: float | None = None


class EpisodeWatch:
    """The episodes of one partition core, as the monitor sees them (module docstring).

    ``begin``/``end`` run on the batch thread; the monitor thread reads ``current`` and
    writes reports under the watch's lock. With ``threshold`` None or 0 nothing is
    watched and both are no-ops. ``monitored=False`` leaves the watch to whoever calls
    ``look`` (a test).
    """

    def __init__(
        self,
        *,
        hub: str,
        partition: int,
        threshold: float | None,
        clock: Clock,
        monitored: bool = True,
    ) -> None:
        self.hub = hub
        self.partition = partition
        self.threshold = float(threshold or 0)
        self._clock = clock
        # The system clock's own function unless the clock is a test's: one Python call
        # less per episode.
        overridden = type(clock).monotonic is not Clock.monotonic
        self._mono = clock.monotonic if overridden else time.monotonic
        #: The episode running now (set and cleared by the batch thread only).
        self.current: _Episode | None = None
        # The report of the last episode reported, which ``end`` completes.
        self._last: _Report | None = None
        #: Episodes reported since the partition started.
        self.count = 0
        self._reports: OrderedDict[str, _Report] = OrderedDict()
        self._lock = threading.Lock()
        self._monitor: _Monitor | _Unmonitored | None = None
        if self.threshold > 0:
            self._monitor = _monitor() if monitored else _Unmonitored()
            self._monitor.add(self)

    # -- the batch thread ---------------------------------------------------------------

    def begin(self, instance_id: str, name: str) -> None:
        """An episode of ``instance_id`` starts on this thread."""
        monitor = self._monitor
        if monitor is None:
            return
        self.current = (instance_id, name, threading.get_ident(), self._mono())
        if not monitor.awake:  # read after the write above (see _Monitor._run)
            monitor.wake()

    def end(self) -> None:
        """The episode that ``begin`` marked is over."""
        episode = self.current
        self.current = None
        last = self._last
        if last is not None and last.episode is episode:
            last.ended = self._mono()

    # -- reports ------------------------------------------------------------------------

    def report(self, instance_id: str) -> BlockingReport | None:
        """The latest report of ``instance_id``, or None."""
        with self._lock:
            found = self._reports.get(instance_id)
        if found is None:
            return None
        iid, name, _, started = found.episode
        ended = found.ended
        return BlockingReport(
            instance_id=iid,
            name=name,
            partition=self.partition,
            reported_at=found.reported_at,
            seconds=found.seconds,
            stack=found.stack,
            finished_after=None if ended is None else ended - started,
        )

    def adopt(self, earlier: EpisodeWatch) -> None:
        """Take over the reports and count of the watch of an earlier core of the same
        partition (rebuilt after a failed batch), and retire that watch."""
        earlier.close()
        with earlier._lock:
            reports = list(earlier._reports.items())
        with self._lock:
            for iid, found in reports:
                self._reports.setdefault(iid, found)
            self.count += earlier.count

    def close(self) -> None:
        """Stop watching (the core is closed or replaced)."""
        if self._monitor is not None:
            self._monitor.remove(self)

    # -- the monitor thread -------------------------------------------------------------

    def look(self) -> float | None:
        """Report the running episode if it is overdue; seconds until it would be, or
        None when no episode runs."""
        episode = self.current
        if episode is None:
            return None
        last = self._last
        if last is not None and last.episode is episode:
            return self.threshold  # reported: look again later, the next one may block
        elapsed = self._mono() - episode[3]
        if elapsed < self.threshold:
            return self.threshold - elapsed
        self._report(episode, elapsed)
        return self.threshold

    def _report(self, episode: _Episode, elapsed: float) -> None:
        found = _Report(episode, self._clock.now(), elapsed)
        self._last = found  # once, whatever happens below; ``end`` completes it from here
        frame = sys._current_frames().get(episode[2])
        found.stack = "" if frame is None else user_stack(frame)
        del frame
        if self.current is not episode:
            # It ended meanwhile (``end`` may not have seen ``_last``): the stack may be
            # of later work.
            found.stack = "(the episode ended before its stack was read)"
            if found.ended is None:
                found.ended = self._mono()
        iid, name = episode[0], episode[1]
        with self._lock:
            self._reports[iid] = found
            self._reports.move_to_end(iid)
            while len(self._reports) > MAX_REPORTS:
                self._reports.popitem(last=False)
            self.count += 1
        log.warning(
            "orchestrator episode blocks its partition",
            hub=self.hub,
            partition=self.partition,
            instance_id=iid,
            orchestration=name,
            seconds=round(elapsed, 3),
            stack=found.stack,
        )


def _own(filename: str) -> bool:
    return filename.startswith(_OWN_DIR) and filename not in _USER_MODULES


def user_stack(frame: Any) -> str:
    """The stack ending at ``frame`` as text (innermost call last): the frames the
    engine called, without duraray's own and those of whatever runs the engine (a
    thread, an executor, Ray). Failing that, every frame but duraray's; failing that,
    all of them."""
    frames = traceback.extract_stack(frame)
    first = next((i for i, f in enumerate(frames) if _own(f.filename)), len(frames))
    user = [f for f in frames[first:] if not _own(f.filename)]
    user = user or [f for f in frames if not _own(f.filename)] or frames
    return "".join(traceback.format_list(user[-MAX_FRAMES:]))


class _Unmonitored:
    """Stands in for the monitor of a watch that only its caller looks at."""

    awake = True

    def add(self, watch: EpisodeWatch) -> None:
        pass

    def remove(self, watch: EpisodeWatch) -> None:
        pass

    def wake(self) -> None:
        pass


class _Monitor:
    """The process's watchdog thread over every registered ``EpisodeWatch``."""

    def __init__(self) -> None:
        self._watches: weakref.WeakSet[EpisodeWatch] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._event = threading.Event()
        # Set when a watch is added: its threshold may be shorter than the pause underway.
        self._added = threading.Event()
        #: False while the thread sleeps until an episode begins (``EpisodeWatch.begin``
        #: then sets the event).
        self.awake = True
        self._thread = threading.Thread(target=self._run, name="duraray-watchdog", daemon=True)
        self._thread.start()

    def add(self, watch: EpisodeWatch) -> None:
        with self._lock:
            self._watches.add(watch)
        self._added.set()
        self._event.set()

    def remove(self, watch: EpisodeWatch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def wake(self) -> None:
        self._event.set()

    def _look(self) -> float | None:
        """Look at every watch; seconds until the next look, or None if none is busy."""
        with self._lock:
            watches = list(self._watches)
        pause: float | None = None
        for watch in watches:
            try:
                due = watch.look()
            except Exception:  # a report that failed must not end the watch
                log.exception("blocking watchdog failed", hub=watch.hub, partition=watch.partition)
                due = watch.threshold
            if due is not None and (pause is None or due < pause):
                pause = due
        return None if pause is None else max(pause, MIN_LOOK_S)

    def _shortest_threshold(self) -> float:
        with self._lock:
            watches = list(self._watches)
        return min((w.threshold for w in watches), default=MIN_LOOK_S)

    def _run(self) -> None:
        while True:
            pause = self._look()
            if pause is None:
                # Going to sleep: say so first, then look once more. An episode that
                # began before ``awake`` turned False is seen by that look; one that
                # began after it sees ``awake`` False and sets the event.
                self._event.clear()
                self.awake = False
                pause = self._look()
                if pause is None:
                    self._event.wait()
                    # Woken by an episode that just began: none can be overdue sooner.
                    # Looking at once would mostly find it over and sleep again, to be
                    # woken by the next one: a wake-up (and a GIL hand-over) per episode.
                    pause = max(self._shortest_threshold(), MIN_LOOK_S)
                self.awake = True
            # Awake, episodes do not signal: only a new watch cuts the pause short.
            self._added.wait(pause)
            self._added.clear()


_MONITOR: _Monitor | None = None
_MONITOR_LOCK = threading.Lock()


def _monitor() -> _Monitor:
    """The process's monitor, started on first use."""
    global _MONITOR
    with _MONITOR_LOCK:
        if _MONITOR is None:
            _MONITOR = _Monitor()
        return _MONITOR


def _forget_monitor() -> None:
    # A forked child has the monitor object but not its thread (and maybe a lock held by
    # a thread it does not have): it starts its own.
    global _MONITOR, _MONITOR_LOCK
    _MONITOR = None
    _MONITOR_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_monitor)
