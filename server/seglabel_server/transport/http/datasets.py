"""Dataset jobs over HTTP: the ``seglabel label`` job for images a browser uploads. A job is created
with the request options, images are added one upload at a time (each admitted into a bounded
window of segment calls, so that an upload waits while the window is full instead of piling images
up in memory), its progress is read per image, and its COCO JSON or a zip with COCO + YOLO-seg is
downloaded. Each job journals its finished images on disk and builds its files from that journal
with the same code as the command line (``seglabel_api.datasets``); jobs live in a temporary
folder, at most ``max_jobs`` of them, and are dropped after ``ttl_s`` without use.

    POST   /datasets                        JSON options -> {"job_id", ...status}
    POST   /datasets/{id}/images            multipart ``image`` (+ ``name``: its relative path)
    GET    /datasets/{id}                   status: counts and one entry per image
    GET    /datasets/{id}/annotations.coco.json
    GET    /datasets/{id}/dataset.zip       annotations.coco.json + yolo/ (data.yaml, labels/)
    DELETE /datasets/{id}
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
import shutil
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

from seglabel_api import options
from seglabel_api.datasets import annotations as records
from seglabel_api.datasets import writers
from seglabel_api.datasets.files import Inventory, Item, sniff
from seglabel_api.datasets.job import LabelOptions
from seglabel_api.datasets.journal import Journal

from seglabel_server.errors import InvalidArgument, LimitExceeded, NotFound, Overloaded
from seglabel_server.transport.grpc import convert
from seglabel_server.transport.grpc.interceptor import TRANSIENT, grpc_status
from seglabel_server.transport.http import json as wire
from seglabel_server.types import RequestContext

log = logging.getLogger(__name__)

_NAME = re.compile(r"[^\x00-\x1f\\\\:*?\"<>|]{1,400}")
WRITER_KEYS = ("mask_format", "polygon_tolerance")


def option_keys() -> set[str]:
    """A dataset job's request options, by their JSON (proto) names."""
    return {options.proto_path(f).split(".")[0] for f in options.declared(options.DATASET)}


def clean_name(name: str) -> str:
    """A relative '/'-separated path: no drive, no '..', no empty parts; refused otherwise."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts or not all(_NAME.fullmatch(p) for p in parts):
        raise InvalidArgument("name must be a relative path of printable characters, without '..'")
    return "/".join(parts)


class Job:
    def __init__(self, folder: Path, settings: dict, categories: list[str], window: int):
        """``settings``: the job's JSON options (a dataset body: request options and how masks are
        written)."""
        self.id = folder.name
        self.folder = folder
        self.ceiling = 0  # the best request class of the token that made the job
        body = {k: v for k, v in settings.items() if k not in WRITER_KEYS}
        # every image's request, read (and checked, as a /segment body is) once
        request = convert.params_from_pb(wire.segment_request({**body, "return_overlay": False}))
        self.categories = categories
        mask_format = settings.get("mask_format", "rle")
        if mask_format not in records.MASK_FORMATS:
            raise InvalidArgument(f"mask_format must be one of {records.MASK_FORMATS}")
        tolerance = float(settings.get("polygon_tolerance", 1.0))
        if not 0 <= tolerance <= 100:
            raise InvalidArgument("polygon_tolerance must be between 0 and 100 pixels")
        self.opts = LabelOptions(request, formats=("coco", "yolo-seg"), mask_format=mask_format,
                                 polygon_tolerance=tolerance)  # fmt: skip
        self.params = self.opts.segment_request()
        self.journal = Journal(folder / "journal.jsonl", {"job": self.id, **self.opts.job()})
        self.inv = Inventory(items=[], skipped=[], unreadable=[])
        self.by_sha: dict[str, Item] = {}
        self.entries: list[dict] = []  # one per added name, in order: name, status, masks, reason
        self.slots = asyncio.Semaphore(window)
        self.tasks: set[asyncio.Task] = set()
        self.touched = time.monotonic()
        self.created = time.time()

    def status(self) -> dict:
        counts = {s: 0 for s in ("queued", "labelling", "done", "failed", "skipped")}
        for e in self.entries:
            counts[e["status"]] += 1
        return {"job_id": self.id, "categories": self.categories, "mask_format": self.opts.mask_format,
                "total": len(self.entries), **counts, "busy": counts["queued"] + counts["labelling"] > 0,
                "images": self.entries}  # fmt: skip


class DatasetJobs:
    def __init__(self, gateway, max_jobs: int = 16, ttl_s: float = 3600.0, window: int = 4):
        self.gateway = gateway
        self.max_jobs, self.ttl_s, self.window = max_jobs, ttl_s, window
        self.root = Path(tempfile.mkdtemp(prefix="seglabel-datasets-"))
        self.jobs: dict[str, Job] = {}

    def _expire(self) -> None:
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if now - job.touched > self.ttl_s and not job.tasks:
                self.delete(job.id)

    async def create(self, settings: dict, ceiling: int = 0) -> Job:
        """A new job; ``ceiling``: the best request class of the token that made it (its images run as
        that token's requests would)."""
        self._expire()
        if len(self.jobs) >= self.max_jobs:
            idle = [j for j in self.jobs.values() if not j.tasks]
            if not idle:
                raise Overloaded(f"{self.max_jobs} dataset jobs are running; retry later", 5000)
            self.delete(min(idle, key=lambda j: j.touched).id)
        unknown = set(settings) - option_keys() - set(WRITER_KEYS)
        if unknown:
            raise InvalidArgument(f"unknown dataset option(s): {', '.join(sorted(unknown))}")
        info = await self.gateway.info()
        if settings.get("skip_labels"):
            categories = ["object"]
        else:
            if info["labels_unavailable_reason"]:
                raise InvalidArgument(f"this server cannot label: {info['labels_unavailable_reason']}")
            if settings.get("vocabulary_name"):  # a stored vocabulary: its labels are the categories
                vocab, _ = await self.gateway.get_vocabulary(settings["vocabulary_name"])
                categories = [lab.name for lab in vocab.labels]
            else:
                categories = list(settings.get("vocabulary") or info["default_vocabulary"])
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        try:
            job = Job(folder, settings, categories, self.window)
            job.ceiling = ceiling
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no dataset job {job_id[:40]!r} (finished jobs are kept {self.ttl_s:.0f} s)")
        job.touched = time.monotonic()
        return job

    def delete(self, job_id: str) -> None:
        job = self.jobs.pop(job_id, None)
        if job is not None:
            for t in job.tasks:
                t.cancel()
            job.journal.close()
            shutil.rmtree(job.folder, ignore_errors=True)

    async def add(self, job_id: str, name: str, data: bytes) -> dict:
        """Queue one image: waits for a place in the job's window, then returns its entry while the
        image is labelled in the background."""
        job = self.get(job_id)
        name = clean_name(name)
        if any(e["name"] == name for e in job.entries):
            raise InvalidArgument(f"{name!r} was added to this job already")
        entry = {"name": name, "status": "queued", "masks": 0, "reason": ""}
        if len(data) > self.gateway.max_image_bytes:
            raise LimitExceeded(
                f"image of {len(data)} bytes is over the limit of {self.gateway.max_image_bytes}"
            )
        job.entries.append(entry)
        if sniff(data[:16]) is None:
            entry.update(status="skipped", reason="not an image (PNG, JPEG, GIF, BMP, TIFF or WebP)")
            job.inv.skipped.append(name)
            return entry
        sha = hashlib.sha256(data).hexdigest()
        image_id = len(job.entries)
        item = job.by_sha.get(sha)
        if item is not None:  # the same bytes under another name: labelled once
            item.names.append(name)
            item.ids.append(image_id)
            entry["duplicate_of"] = item.names[0]
            first = next(e for e in job.entries if e["name"] == item.names[0])
            if first["status"] in ("done", "failed"):
                entry.update(status=first["status"], masks=first["masks"], reason=first["reason"])
            return entry
        item = job.by_sha[sha] = Item(sha, [name], [image_id])
        job.inv.items.append(item)
        await job.slots.acquire()
        entry["status"] = "labelling"
        task = asyncio.get_running_loop().create_task(self._label(job, item, data))
        job.tasks.add(task)
        task.add_done_callback(job.tasks.discard)
        return entry

    async def _label(self, job: Job, item: Item, data: bytes) -> None:
        try:
            try:
                result = await self.gateway.segment(
                    job.params, None, data, RequestContext(ceiling=job.ceiling)
                )
                resp = convert.result_to_pb(result)
                rec = await asyncio.to_thread(records.image_record, resp, item.sha, job.opts)
            except Exception as exc:  # the image's failure, recorded; the job goes on
                code, message = grpc_status(exc)  # worded as the gRPC client's failures are
                rec = {
                    "sha": item.sha,
                    "ok": False,
                    "reason": f"{code.name}: {message}",
                    "retry": code in TRANSIENT,
                }
            del data
            await asyncio.to_thread(job.journal.append, rec)
            for e in job.entries:
                if e["name"] in item.names:
                    if rec["ok"]:
                        e.update(status="done", masks=len(rec["anns"]))
                    else:
                        e.update(status="failed", reason=rec["reason"])
        finally:
            job.slots.release()

    async def _settled(self, job: Job) -> None:
        if job.tasks:
            await asyncio.gather(*list(job.tasks), return_exceptions=True)

    def _info(self, job: Job) -> dict:
        return {"description": f"seglabel dataset job {job.id}", "version": "1.0", "mask_format": job.opts.mask_format,
                "segmentation": "COCO RLE" if job.opts.mask_format == "rle" else
                "polygons; a mask with holes, or whose polygons redraw it with IoU under "
                f"{records.POLYGON_MIN_IOU}, stays RLE"}  # fmt: skip

    async def coco(self, job_id: str) -> Path:
        job = self.get(job_id)
        await self._settled(job)
        path = job.folder / "annotations.coco.json"
        await asyncio.to_thread(
            writers.write_coco, path, job.inv, job.journal, job.categories, self._info(job)
        )
        return path

    async def zip(self, job_id: str) -> bytes:
        job = self.get(job_id)
        path = await self.coco(job_id)

        def build() -> bytes:
            writers.write_yolo(job.folder / "yolo", None, job.inv, job.journal, job.categories)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                z.write(path, "annotations.coco.json")
                for f in sorted((job.folder / "yolo").rglob("*")):
                    if f.is_file():
                        z.write(f, "yolo/" + f.relative_to(job.folder / "yolo").as_posix())
            return buf.getvalue()

        return await asyncio.to_thread(build)

    def close(self) -> None:
        for job_id in list(self.jobs):
            self.delete(job_id)
        shutil.rmtree(self.root, ignore_errors=True)
