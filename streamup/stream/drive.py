"""One stream's life, from its file to its metadata: the file opened when the descriptor budget
has room, a resumed stream reconciled with S3, parts grown and the upload finalized, the
metadata written (retried until it is, or the agent stops). A permanent error or a bug in one
stream pauses that stream only; the agent's bookkeeping around it is `service.Agent._drive`.
"""

from __future__ import annotations

from streamup.errors import LeaseLost
from streamup.files.budget import FileGone
from streamup.models import Status
from streamup.stream.finalize import finalize, finish_lost, write_metadata
from streamup.stream.recovery import reconcile
from streamup.stream.worker import PERMANENT_ERROR_PAUSE_S, StreamWorker


async def drive(worker: StreamWorker, resumed: bool) -> None:
    """Live the stream until it is final, its lease is lost or the agent stops."""
    while not worker.ctx.stopping.is_set():
        try:
            await live(worker, resumed)
            return
        except LeaseLost as exc:
            worker.lease_lost = True
            worker.log.warning("stream.lease_lost", error=str(exc), action="backing off")
            return
        except Exception as exc:
            # A permanent error or a bug in one stream never stops the others: report
            # it once, wait longer each time, pick the stream up again as after a restart.
            await worker.pause_after(exc)
            resumed = True


async def hold(worker: StreamWorker, resumed: bool) -> None:
    """Open the stream's file once the descriptor budget has room (files.budget). A
    resumed stream may have been found by another host: its inode must match, and the
    device it has here is taken (NFS numbers devices per client)."""
    if worker.source is not None:
        return
    record = worker.record
    worker.source = await worker.ctx.files.open(
        record.path, record.identity, same_device=not resumed
    )
    if worker.source is not None and worker.source.identity != record.identity:
        worker.record = record.evolve(identity=worker.source.identity)


async def live(worker: StreamWorker, resumed: bool) -> None:
    await hold(worker, resumed)
    if worker.record.status.object_completed:
        await describe(worker)
        return
    if worker.source is None:
        await finish_lost(worker)
        await describe(worker)
        return
    if resumed and await reconcile(worker):
        await describe(worker)
        return
    if worker.record.status != Status.ACTIVE:
        await worker.set_status(Status.ACTIVE)
    try:
        while await worker.grow():
            if await finalize(worker):
                await describe(worker)
                return
    except FileGone:
        await finish_lost(worker)  # it gave its place up and its file went meanwhile
        await describe(worker)


async def describe(worker: StreamWorker) -> None:
    """Retry a failed metadata step until it succeeds or the agent stops."""
    stopping = worker.ctx.stopping
    while not stopping.is_set() and worker.record.status.object_completed:
        if worker.record.status != Status.COMPLETED:
            if worker.record.status != Status.S3_COMPLETED:
                await worker.pause(PERMANENT_ERROR_PAUSE_S)
                if stopping.is_set():
                    return
                await worker.set_status(Status.S3_COMPLETED)
            await write_metadata(worker)
        if worker.record.status == Status.COMPLETED:
            return
