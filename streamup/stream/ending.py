"""The confirmation of an end the writer's close announced, run beside the end-of-stream check.

On this host the agent sees a recording's writer close the file; the stream still ends only after
a short confirmation (lifecycle.WRITER_GONE_CONFIRM_S without a change, no writer back), because a
writer may open the file again. The check reads nothing the confirmation needs, so it starts at
the close (lifecycle.may_check) and the confirmation is awaited here, before anything is
completed: the end stands only if the file is still exactly what it was when the check began.
Re-reading a large recording takes about as long as the confirmation, so the two overlap.

A writer that did come back turns the early start off for its stream: such a writer closes and
reopens as it goes, and each early start would re-read the file for nothing.
"""

from __future__ import annotations

from streamup.faults import crash_point
from streamup.stream.lifecycle import should_end
from streamup.stream.worker import StreamWorker

CONFIRM_TICK_S = 0.1


async def end_confirmed(worker: StreamWorker) -> bool:
    """True when the stream's end stands (or never needed confirming); False when the file
    changed, its writer came back, or the agent is stopping: the stream goes on growing."""
    pending, worker.unconfirmed_end = worker.unconfirmed_end, None
    if pending is None:
        return True
    crash_point("before_end_confirmed")
    source, clock = worker.source, worker.ctx.clock
    started = clock()
    while source is not None and not worker.ctx.stopping.is_set():
        if not pending.holds(source.fstat(), source.ctime_ns()):
            return _came_back(worker, "the file changed")
        writer_now = await worker.ctx.writers.is_written(worker.record.identity)
        if writer_now:
            return _came_back(worker, "a process opened it for writing again")
        idle_s = pending.activity.idle_for_s(clock())
        if should_end(idle_s, worker.ctx.timeout_s, writer_seen=True, writer_now=writer_now):
            worker.log.debug("stream.end_confirmed", waited_s=round(clock() - started, 3))
            return True
        await worker.pause(CONFIRM_TICK_S)
    return False


def _came_back(worker: StreamWorker, why: str) -> bool:
    worker.check_early = False
    worker.log.info("stream.end_unconfirmed", reason=why)
    return False
