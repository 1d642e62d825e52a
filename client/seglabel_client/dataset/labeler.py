"""``seglabel label``: a folder of images in, COCO / YOLO-seg annotations out, through a running
server. A bounded window of requests keeps the server's batches full; every finished image is
journalled at once, so a killed run resumes where it stopped and gives the same files."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from pathlib import Path

import grpc
from seglabel_api import options
from seglabel_api.datasets import annotations as records
from seglabel_api.datasets.files import Inventory, Item, inventory
from seglabel_api.datasets.job import FORMATS, LabelOptions, Progress, canonical_job, finish
from seglabel_api.datasets.journal import Journal
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb

from seglabel_client.client import DEFAULT_TARGET, AsyncSegmenterClient

# A failure with one of these may pass on another try (the next run retries it); the others are
# the image's own (undecodable, too large) and are kept.
_TRANSIENT = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.ABORTED, grpc.StatusCode.DATA_LOSS}  # fmt: skip
_SERVER_GONE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


class ServerGone(RuntimeError):
    """The server stayed unreachable past ``server_wait_s``: the run stops, the journal keeps what
    was done, and the same command continues later."""


def _pushback_ms(err: grpc.aio.AioRpcError) -> int | None:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-retry-pushback-ms":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _segment(client: AsyncSegmenterClient, data: bytes, opts: LabelOptions):
    """One image's Segment call under the job's retry policy (:func:`_retrying`)."""
    req = options.to_pb(opts.segment_request(), pb.SegmentRequest())
    req.image = data
    return await _retrying(
        lambda: client.stub.Segment(req, timeout=opts.timeout, metadata=client.metadata), opts
    )


async def _retrying(call, opts: LabelOptions):
    """``await call()`` under the job's retry policy: refused at the door (RESOURCE_EXHAUSTED with
    pushback) -> again after the pushback; unreachable (UNAVAILABLE: starting, restarting,
    draining) -> again with backoff for up to ``server_wait_s``, then ServerGone. Other errors are
    raised (for an image: recorded as its failure)."""
    waited, backoff = 0.0, 0.5
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            code = err.code()
            push = _pushback_ms(err) if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
            if push is not None and push >= 0:
                await asyncio.sleep(push / 1000 * random.uniform(1.0, 1.5))
                continue
            if code in _SERVER_GONE:
                if waited >= opts.server_wait_s:
                    raise ServerGone(
                        f"server unreachable for {waited:.0f} s ({code.name}: {err.details()}); "
                        "run the same command again to continue"
                    ) from None
                await asyncio.sleep(backoff)
                waited += backoff
                backoff = min(backoff * 2, 10.0)
                continue
            raise


async def _vocabulary(client: AsyncSegmenterClient, opts: LabelOptions) -> tuple[list[str], object, int]:
    """(categories, server info, the stored vocabulary's revision or 0)."""
    info = await _retrying(client.server_info, opts)
    request = opts.request
    if request.skip_labels:
        return ["object"], info, 0
    if info.labels_unavailable_reason:
        raise RuntimeError(
            f"the server cannot label ({info.labels_unavailable_reason}); pass --no-labels for masks only"
        )
    if request.vocabulary_name:
        if request.vocabulary:
            raise ValueError("give --labels or --vocabulary-name, not both")
        try:
            vocab = await _retrying(lambda: client.get_vocabulary(request.vocabulary_name), opts)
        except grpc.aio.AioRpcError as err:
            raise RuntimeError(
                f"vocabulary {request.vocabulary_name!r}: {err.code().name}: {err.details()}"
            ) from None
        return [lab.label.name for lab in vocab.labels], info, vocab.revision
    return list(request.vocabulary or info.default_vocabulary), info, 0


# Requests in flight by default: enough to fill the CPU encoder's batch of 4 while the previous
# batch's masks are decoded and labelled; a server that is full says so with its pushback.
WINDOW = 8


async def label_folder_async(
    root: str | Path,
    out: str | Path,
    server: str = DEFAULT_TARGET,
    options: LabelOptions | None = None,
    restart: bool = False,
    progress=None,
    tls_ca: str | None = None,
    token: str | None = None,
) -> dict:
    """Label every image under ``root`` into ``out`` (see the module doc); returns the report."""
    # each run its own fair-share key, even two runs of one options object in one process
    opts = dataclasses.replace(options or LabelOptions(), run=uuid.uuid4().hex[:12])
    bad = set(opts.formats) - set(FORMATS)
    if bad or not opts.formats:
        raise ValueError(f"formats must be among {FORMATS}, got {sorted(bad) or '[]'}")
    if opts.mask_format not in records.MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {records.MASK_FORMATS}")
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    inv: Inventory = await asyncio.to_thread(inventory, root, [out])
    async with AsyncSegmenterClient(server, timeout=opts.timeout, tls_ca=tls_ca, token=token) as client:
        categories, info, revision = await _vocabulary(client, opts)
        if opts.request.vocabulary_name:
            # the journal records which revision labelled: a changed one is a new job
            opts = dataclasses.replace(opts, vocabulary_revision=revision)
        else:  # the categories, written down: a server whose default changes labels a new job
            vocabulary = () if opts.request.skip_labels else tuple(categories)
            opts = dataclasses.replace(opts, request=dataclasses.replace(opts.request, vocabulary=vocabulary))
        journal = Journal(out / "journal.jsonl", opts.job(), restart=restart, canonical=canonical_job)
        try:
            todo = [item for item in inv.items if journal.pending(item.sha)]
            prog = Progress(total=len(inv.items), done=len(inv.items) - len(todo))
            prog.failed = sum(1 for ok, *_ in journal.records.values() if not ok)
            await _run(client, root, todo, journal, opts, opts.window or WINDOW, prog, progress)
        finally:
            journal.close()
        if progress is not None:
            progress(prog, final=True)
        seconds = time.monotonic() - t0
        report = await asyncio.to_thread(
            finish, root, out, inv, journal, opts, categories, info, prog, seconds
        )
    return report


async def _run(client, root: Path, todo: list[Item], journal: Journal, opts, window: int, prog, progress):
    sem = asyncio.Semaphore(window)
    errors: list[BaseException] = []

    async def one(item: Item) -> None:
        try:
            data = await asyncio.to_thread((root / item.names[0]).read_bytes)
            try:
                resp = await _segment(client, data, opts)
                rec = await asyncio.to_thread(records.image_record, resp, item.sha, opts)
            except grpc.aio.AioRpcError as err:
                rec = {"sha": item.sha, "ok": False, "reason": f"{err.code().name}: {err.details()}",
                       "retry": err.code() in _TRANSIENT}  # fmt: skip
            del data
            journal.append(rec)
            prog.add(rec)
            if progress is not None:
                progress(prog)
        except BaseException as exc:  # ServerGone, a disk error: stop the run
            errors.append(exc)
        finally:
            sem.release()

    tasks: set[asyncio.Task] = set()
    try:
        for item in todo:
            await sem.acquire()
            if errors:
                sem.release()
                break
            task = asyncio.create_task(one(item))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    if errors:
        raise errors[0]


def label_folder(root, out, server: str = DEFAULT_TARGET, options: LabelOptions | None = None, **kw) -> dict:
    """Synchronous :func:`label_folder_async`."""
    return asyncio.run(label_folder_async(root, out, server, options, **kw))
