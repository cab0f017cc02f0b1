"""The end-of-stream check: every part against the file as it is now, in one ordered pass.

Recorders rewrite what they wrote (the MP4 muxer patches its `mdat` header on exit; faststart
moves `moov` to the front), so before completing, every part is compared with the file; a part
that changed goes up again under the same number, and so does a part the server's proof does not
cover (s3.integrity). The object then equals the file as it is now, byte for byte.

Cheap where it can be: a part is not even re-read when it provably cannot have changed since it
was read (the file's last change is older than the read, on a local filesystem:
`lifecycle.unchanged_since_read`) and the running SHA-256 took in those very bytes. Other parts
are re-read and compared by CRC32C; from the first part that changed (or that the running hash
did not take in), the SHA-256 continues from its state before that part.

The reads run ahead of the comparison (READ_AHEAD parts, each in a thread that also computes its
CRC32C), so both cores read while the parts are compared in order. A read ahead holds a part slot;
before the pass waits for a slot of its own (a part it did not read ahead), it gives back every
slot it holds ahead, so passes of several streams can never hold each other's slots.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from streamup import metrics
from streamup.checksums import md5_of
from streamup.errors import SourceChanged
from streamup.files.hashing import PrefixHash
from streamup.files.source import PartData, read_mark
from streamup.models import PartRecord, Proof
from streamup.s3.integrity import ProofMode, part_proof
from streamup.s3.parts import PartSpan, final_layout
from streamup.stream.lifecycle import unchanged_since_read
from streamup.stream.worker import StreamWorker

READ_AHEAD = 2


class EndCheck:
    """One pass over a stream's file before completion. Memory: the part slots."""

    def __init__(self, worker: StreamWorker) -> None:
        assert worker.source is not None
        self.worker = worker
        self.source = worker.source
        self.caps = worker.ctx.integrity
        self.rehash: PrefixHash | None = None  # None while worker.hash holds the file's prefix
        self.reuploaded = 0
        self.skipped_bytes = 0
        self._sends: set[asyncio.Future[PartRecord]] = set()
        self._ahead: dict[int, asyncio.Future[PartData]] = {}  # reads ahead, by part number

    async def run(self) -> tuple[list[PartRecord], str, int]:
        """The parts of the object, the file's SHA-256, and how many parts the writer changed."""
        worker, source = self.worker, self.source
        before, ctime_before = source.fstat(), source.ctime_ns()
        self._ctime, self._now = ctime_before, read_mark()
        layout = final_layout(worker.schedule, before.size_bytes) or [PartSpan(1, 0, 0)]
        await worker.drop_parts_past_end(before.size_bytes)
        try:
            await self._pass(layout)
            for finished in asyncio.as_completed(list(self._sends)):
                await finished
            self._sends = set()
        finally:
            if self._sends:
                await asyncio.gather(*self._sends, return_exceptions=True)
        if source.fstat() != before or source.ctime_ns() != ctime_before:
            raise SourceChanged("the file changed while it was verified")
        whole = self.rehash if self.rehash is not None else worker.hash
        assert whole.end_bytes == before.size_bytes, "the SHA-256 covers the whole file"
        worker.log.debug(
            "stream.checked",
            skipped_bytes=self.skipped_bytes,
            reread_bytes=before.size_bytes - self.skipped_bytes,
        )
        parts = [worker.parts[s.number] for s in layout]
        return parts, await whole.hexdigest(), self.reuploaded

    async def _pass(self, layout: list[PartSpan]) -> None:
        """Check every span in order, reading up to READ_AHEAD parts ahead."""
        ahead = min(READ_AHEAD, self.worker.ctx.window - 1)
        try:
            for index, span in enumerate(layout):
                read = self._ahead.pop(span.number, None)
                if read is None and not self._skippable(span, self._known(span)):
                    await self._give_back_reads_ahead()
                    read = self._start_read(span)  # first in line for a slot
                for later in layout[index + 1 : index + 1 + ahead]:
                    if later.number not in self._ahead and not self._skippable(
                        later, self._known(later)
                    ):  # a part skipped now may still be read in its turn, once rehashing
                        self._ahead[later.number] = self._start_read(later)
                await self._check(span, read)
        finally:
            await self._give_back_reads_ahead()

    def _start_read(self, span: PartSpan) -> asyncio.Future[PartData]:
        known = self._known(span)
        legacy = known is not None and not known.crc32c_hex
        return asyncio.ensure_future(self._read_holding_slot(span, legacy=legacy))

    async def _give_back_reads_ahead(self) -> None:
        """Cancel the reads ahead; the slot of every one that had finished goes back."""
        reads, self._ahead = list(self._ahead.values()), {}
        for read in reads:
            read.cancel()
        for outcome in await asyncio.gather(*reads, return_exceptions=True):
            if isinstance(outcome, PartData):
                self.worker.ctx.part_slots.release()

    def _known(self, span: PartSpan) -> PartRecord | None:
        known = self.worker.parts.get(span.number)
        if known is not None and known.size_bytes != span.size_bytes:
            return None  # a range re-cut at the end (the old tail, a shrunk file)
        return known

    def _unproven(self, known: PartRecord | None) -> bool:
        """A part no proof covers that this run could prove by sending it again: one from before
        the proof existed, or one sent while the agent proved nothing (S3_INTEGRITY_MODE=none)."""
        if known is None or self.worker.proof_mode is ProofMode.NONE:
            return False
        with_checksum = bool(self.worker.record.checksum_algorithm)
        return part_proof(known, self.caps, with_checksum=with_checksum) is Proof.UNVERIFIED

    def _skippable(self, span: PartSpan, known: PartRecord | None) -> bool:
        if self.rehash is not None or known is None or self._unproven(known):
            return False
        mark = self.worker.read_marks.get(span.number)
        return (
            mark is not None
            and self.worker.hash.covers(span, known.crc32c_hex)
            and unchanged_since_read(mark, self._ctime, self._now, local=self.source.local)
        )

    async def _check(self, span: PartSpan, read: asyncio.Future[PartData] | None) -> None:
        """Compare one part with the file, as `read`; None: it provably has not changed."""
        worker = self.worker
        known = self._known(span)
        if read is None:
            self.skipped_bytes += span.size_bytes
            return
        data = await read
        unchanged = known is not None and _same_bytes(known, data)
        covered = unchanged and known is not None and worker.hash.covers(span, known.crc32c_hex)
        if self.rehash is None and not covered:
            state = await worker.hash.state_at(span)
            assert state is not None, "the running hash reaches every part checked so far"
            self.rehash = PrefixHash(state, span.offset_bytes)
        hashed = (
            None if self.rehash is None else self.rehash.feed(span, data.body, data.crc32c.hex())
        )
        if unchanged and not self._unproven(known):
            self._release_when_done([hashed])
            return
        if known is not None and not unchanged:
            self.reuploaded += 1  # same range, other bytes: the writer went back and changed it
            metrics.PARTS_REUPLOADED.inc()
        if data.md5 is None and worker.with_md5:
            data = dataclasses.replace(data, md5=await asyncio.to_thread(md5_of, data.body))
        task = asyncio.ensure_future(worker.send(data))
        del data  # the task holds it now, and the slot goes back when it is done
        self._release_when_done([hashed, task])
        self._sends.add(task)
        if len(self._sends) >= worker.ctx.window:
            done, self._sends = await asyncio.wait(self._sends, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                finished.result()

    async def _read_holding_slot(self, span: PartSpan, *, legacy: bool) -> PartData:
        """Take a part slot, then read the part (its CRC32C; the MD5 too for a `legacy` part,
        from before checksums, compared by MD5). The slot goes back through _release_when_done.

        The slot is taken before the bytes are read: however many streams are checked at once,
        no more than UPLOAD_CONCURRENCY parts are in memory.
        """
        slots = self.worker.ctx.part_slots
        await slots.acquire(self.worker.priority)
        try:
            data = await self.source.read_part(span, with_md5=legacy)
        except BaseException:
            slots.release()
            raise
        if data is None:
            slots.release()
            raise SourceChanged(f"the file shrank while part {span.number} was read")
        return data

    def _release_when_done(self, futures: list[asyncio.Future[Any] | None]) -> None:
        """Give the part slot back once everything still holding the part's bytes is done."""
        slots = self.worker.ctx.part_slots
        waiting = [f for f in futures if f is not None and not f.done()]
        if not waiting:
            slots.release()
            return
        gathered = asyncio.gather(*waiting, return_exceptions=True)
        gathered.add_done_callback(lambda _f: slots.release())


def _same_bytes(known: PartRecord, data: PartData) -> bool:
    if known.crc32c_hex:
        return known.crc32c_hex == data.crc32c.hex()
    return data.md5 is not None and known.md5_hex == data.md5.hex()
