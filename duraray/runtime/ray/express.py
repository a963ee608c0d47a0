"""Small instances' inline steps go first, and the next batch waits a moment for them.

A partition busy with a huge fan-out starts its next batch the moment the last one is
released. A five-step orchestration on the same partition releases one cheap activity per
step; run inline, it finishes in microseconds, but it used to queue behind the fan-out's
chunks on the inline threads, and its result reached the partition after the next batch
had already taken its intake. The step then waited for a second whole batch: measured,
43% of such steps under a 200,000-activity flood did.

The dispatch plan puts the inline activities of instances with only one or two of them in
a batch into one express chunk (engine/dispatch.py, at most MAX_BATCH activities). This
lane runs that chunk on a thread of its own, so no fan-out chunk is ahead of it, and when
the next batch would start at once (other work is waiting), ``settle`` lets the batch loop
wait for it, at most ``WAIT_S``: the step is then applied by the very next batch (under a
200,000-activity flood, 14 of 2,490 steps still missed it). Only the chunk of the latest
release is waited for, and a chunk that overruns its wait (an inline activity that blocked
after all) leaves the express thread to itself: the next express chunks go to the
partition's ordinary inline threads until it is free, unwaited for (there they may queue
behind a fan-out's chunks), so nothing queues behind a blocked one.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor, ThreadPoolExecutor

#: The longest the batch loop waits for the express chunk it just released. An inline
#: activity takes well under a millisecond (dispatch.py) and the typical express chunk
#: holds one or two; a chunk that takes longer (at most MAX_BATCH activities) is let go,
#: its results applied by a later batch.
WAIT_S = 0.001


class ExpressLane:
    """The express thread and the chunks the batch loop may wait for (see the module)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="express")
        self._busy = 0  # chunks on the express thread, running or queued
        self._jobs: list[asyncio.Future[None]] = []

    def executor(self, fallback: Executor) -> Executor:
        """Where the next express chunk runs: the express thread if it is free, else
        ``fallback`` (the ordinary inline threads)."""
        return fallback if self._busy else self._pool

    def started(self, job: asyncio.Future[None], executor: Executor) -> None:
        """An express chunk went out to ``executor``. The batch loop may wait for it only
        on the express thread: on the inline threads it may queue behind a fan-out's
        chunks, and waiting for it would cost every batch the whole ``WAIT_S``."""
        if executor is not self._pool:
            return
        self._jobs.append(job)
        self._busy += 1
        job.add_done_callback(self._done)

    def _done(self, _job: asyncio.Future[None]) -> None:
        self._busy -= 1

    async def settle(self, wait: bool) -> None:
        """After each release: if ``wait``, wait (at most ``WAIT_S``) for the express
        chunks released since the last call; either way, forget them."""
        jobs, self._jobs = self._jobs, []
        if wait:
            pending = [job for job in jobs if not job.done()]
            if pending:
                await asyncio.wait(pending, timeout=WAIT_S)
