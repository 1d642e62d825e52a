"""The Label Studio ML backend: a project's labeling config decides the output (brush masks in
Label Studio's RLE, polygons or boxes in percent) and its labels are the project's vocabulary,
stored in the server's vocabulary store as ``label-studio-<project>``. Predictions are computed by
the same service as every other call (the gateway), many tasks at once so the scheduler batches
them; what is not done within ``predict_seconds`` goes on in the background and is posted to Label
Studio's API, so a whole project never meets Label Studio's 100 s prediction timeout."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections import OrderedDict
from typing import Any

from seglabel_api import options as declared
from seglabel_api.datasets.annotations import outline
from seglabel_api.formats import labelstudio as ls

from seglabel_server import amg
from seglabel_server.errors import InvalidArgument, NotFound
from seglabel_server.transport.http.gateway import Gateway
from seglabel_server.transport.http.labelstudio.connection import Connection, Unreachable
from seglabel_server.transport.http.labelstudio.interactive import interactive
from seglabel_server.transport.http.labelstudio.tasks import TaskFailed, parse, task_error, task_ref
from seglabel_server.types import SegmentOptions

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Settings:
    """The backend's settings (flags of the server: ``--label-studio-*``)."""

    url: str = ""  # Label Studio's URL when /setup has not said it (LABEL_STUDIO_URL)
    api_key: str = ""  # its key (LABEL_STUDIO_API_KEY): a legacy token or a personal access token
    predict_seconds: float = 30.0  # well under ML_TIMEOUT_PREDICT (100 s) and the proxies in front (60 s)
    concurrency: int = 8  # a /predict's tasks in flight at once (batched across by the scheduler)
    remember_tasks: int = 20_000  # tasks whose predicted regions are kept to learn from corrections


@dataclasses.dataclass
class Project:
    id: str
    vocabulary: str
    connection: Connection
    options: dict  # Segment options from the ML backend's "extra params" (validated)


def project_id(value) -> str:
    """Label Studio's project uid ``"<id>.<created timestamp>"`` (or a bare id, or a project dict)."""
    if isinstance(value, dict):
        value = value.get("id", "")
    pid = str(value or "").split(".", 1)[0]
    if not pid.isdigit():
        raise InvalidArgument(f"project {str(value)[:40]!r} is not a Label Studio project id")
    return pid


class LabelStudioBackend:
    def __init__(self, gateway: Gateway, settings: Settings):
        self.gateway, self.settings = gateway, settings
        self.projects: dict[str, Project] = {}
        # (project, task) -> its last predictions, each {region id: (label, COCO RLE)}: what an
        # annotation started from (found by its region ids), to read the corrections by
        self.predicted: OrderedDict[tuple[str, Any], list[dict[str, tuple[str, dict]]]] = OrderedDict()
        self.learning: dict[str, asyncio.Lock] = {}  # one webhook at a time per project
        self.images: OrderedDict[tuple[str, str], tuple[str, int, int]] = OrderedDict()  # -> upload
        self.running: dict[tuple[str, Any], asyncio.Future] = {}  # predictions left to the background
        self.finished: OrderedDict[tuple[str, Any, str], dict] = OrderedDict()  # background results
        self.counts = {"predicted": 0, "failed": 0, "background": 0, "posted": 0, "examples": 0}

    # -- projects ---------------------------------------------------------------------------------
    def project(self, value, hostname: str = "", token: str = "", extra: dict | None = None) -> Project:
        pid = project_id(value)
        known = self.projects.get(pid)
        if known is not None and not (hostname or token or extra):
            return known
        url = hostname or (known.connection.url if known else "") or self.settings.url
        # The key the operator configured first: the token /setup sends is the project creator's
        # legacy token, which Label Studio 1.23 turns off by default.
        key = self.settings.api_key or token or (known.connection.key if known else "")
        extra = dict(extra if extra is not None else (known.options if known else {}))
        vocab = str(extra.pop("vocabulary", "") or f"label-studio-{pid}")
        try:
            declared.from_kwargs(declared.SEGMENT, **extra)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"extra params: {exc}") from None
        self.projects[pid] = Project(pid, vocab, Connection(url, key), extra)
        return self.projects[pid]

    async def known(self, value) -> Project:
        """A project this backend serves: set up here, or with its vocabulary in the store (set up by
        another replica, or before a restart); NotFound otherwise."""
        pid = project_id(value)
        if pid not in self.projects:
            try:
                await self.gateway.get_vocabulary(f"label-studio-{pid}")
            except NotFound:
                raise NotFound(
                    f"Label Studio project {pid} is not connected to this backend (no /setup, no vocabulary "
                    f"label-studio-{pid})"
                ) from None
        return self.project(pid)

    async def vocabulary(self, project: Project, config: ls.LabelingConfig):
        """The project's vocabulary holding the config's labels: its own is kept in step (labels
        added); a named one (extra params ``vocabulary``) must already hold them."""
        if project.vocabulary == f"label-studio-{project.id}":
            vocab, _ = await self.gateway.ensure_labels(project.vocabulary, list(config.labels))
            return vocab
        vocab, _ = await self.gateway.get_vocabulary(project.vocabulary)
        missing = [lab for lab in config.labels if vocab.label(lab) is None]
        if missing:
            raise InvalidArgument(
                f"the labeling config's label(s) {', '.join(map(repr, missing[:5]))} are not in vocabulary "
                f"{project.vocabulary!r}: add them (seglabel vocab), or leave extra params' vocabulary unset"
            )
        return vocab

    async def model_version(self, vocab) -> str:
        info = await self.gateway.info()
        shas = "".join(m.get("sha256", "") for m in info.get("models", []))
        tag = hashlib.sha256(shas.encode()).hexdigest()[:8]
        random = "-random-weights" if info.get("random_weights") else ""
        return f"seglabel-{tag}{random}-{vocab.name}-r{vocab.revision}"

    async def setup(self, body: dict) -> dict:
        project = self.project(body.get("project"), body.get("hostname", ""), body.get("access_token", ""),
                               body.get("extra_params") or None)  # fmt: skip
        config = parse(body.get("schema"))
        return {"model_version": await self.model_version(await self.vocabulary(project, config))}

    # -- images -----------------------------------------------------------------------------------
    async def image(self, project: Project, ref: str, task_id: int | None, fresh: bool = False):
        """(file_id, width, height) of a task's image, uploaded to the service once per reference."""
        # a data: URI is the image itself: keyed by its digest, not kept whole (4096 of them)
        key = (project.id, ref if len(ref) <= 2048 else hashlib.sha256(ref.encode()).hexdigest())
        hit = self.images.get(key)
        if hit is not None and not fresh:
            self.images.move_to_end(key)
            return hit
        data = await asyncio.to_thread(project.connection.read_image, ref, task_id)
        try:
            got = await self.gateway.upload(data, ref.rsplit("/", 1)[-1][:200])
        except InvalidArgument as exc:
            raise TaskFailed(f"image {ref!r}: {exc}") from None
        self.images[key] = got
        while len(self.images) > 4096:
            self.images.popitem(last=False)
        return got

    async def _segment(self, project: Project, ref: str, task_id, opts: SegmentOptions):
        file_id, w, h = await self.image(project, ref, task_id)
        try:
            return await self.gateway.segment(opts, file_id, None)
        except NotFound:  # the upload expired: read it again
            file_id, w, h = await self.image(project, ref, task_id, fresh=True)
            return await self.gateway.segment(opts, file_id, None)

    # -- predictions ------------------------------------------------------------------------------
    async def predict_task(self, project: Project, config: ls.LabelingConfig, vocab, version: str,
                           task: dict) -> dict:  # fmt: skip
        """One task's prediction: every mask of a grid, labelled with the project's vocabulary."""
        control = config.output
        task_id, ref = task_ref(task, control)
        opts = declared.from_kwargs(declared.SEGMENT, **project.options)
        # a project's pre-annotation is batch work: the annotators' clicks overtake it
        opts = dataclasses.replace(opts, prompt_type="grid", vocabulary_name=vocab.name, vocabulary=(),
                                   return_overlay=False, top_k=max(opts.top_k, 5),
                                   priority=opts.priority or "batch", job=opts.job or f"label-studio-{project.id}")  # fmt: skip
        result = await self._segment(project, ref, task_id, opts)
        # decoding and encoding every mask is CPU work: off the event loop, as the pipeline's is
        regions, scores, remembered = await asyncio.to_thread(_regions, control, result, set(config.labels))
        self.remember(project.id, task_id, remembered)
        return {"result": regions, "score": ls.task_score(scores), "model_version": version}

    def remember(self, pid: str, task_id: int, regions: dict) -> None:
        kept = self.predicted.setdefault((pid, task_id), [])
        kept[:] = [*kept[-3:], regions]
        self.predicted.move_to_end((pid, task_id))
        while len(self.predicted) > self.settings.remember_tasks:
            self.predicted.popitem(last=False)

    async def predict(self, body: dict) -> dict:
        """``/predict``: one prediction per task, in order; a task that fails answers ``{"error"}``
        (Label Studio skips it, the others are saved). With a ``context`` (interactive), the one
        task's mask for the annotator's clicks or box."""
        project = self.project(body.get("project"))
        config = parse(body.get("label_config"))
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise InvalidArgument("'tasks' must be a list of tasks")
        context = (body.get("params") or {}).get("context") or {}
        if context.get("result"):
            return {"results": [await interactive(self, project, config, tasks, context)]}
        vocab = await self.vocabulary(project, config)
        version = await self.model_version(vocab)
        gate = asyncio.Semaphore(max(1, self.settings.concurrency))

        async def one(task):
            async with gate:
                return await self.predict_task(project, config, vocab, version, task)

        jobs = [self._job(project.id, task, version, one) for task in tasks]
        pending = [j for j in jobs if isinstance(j, asyncio.Future)]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.predict_seconds)
        results = [self._answer(project, task, job, version) for task, job in zip(tasks, jobs)]
        return {"results": results, "model_version": version}

    def _job(self, pid: str, task, version: str, start) -> dict | asyncio.Future:
        """A task's prediction: finished in the background since the last call, still running from
        it, or started now."""
        tid = task.get("id") if isinstance(task, dict) else None
        if tid is None:
            return asyncio.ensure_future(start(task))
        done = self.finished.pop((pid, tid, version), None)
        if done is not None:
            return done
        job = self.running.get((pid, tid))
        if job is None:
            job = self.running[(pid, tid)] = asyncio.ensure_future(start(task))
            job.add_done_callback(lambda _: self.running.pop((pid, tid), None))
        return job

    def _answer(self, project: Project, task, job, version: str) -> dict:
        if isinstance(job, dict):
            return job
        if not job.done():
            self.counts["background"] += 1
            task_id = task.get("id")
            job.add_done_callback(lambda j: self._background_done(project, task_id, j, version))
            where = "posted to Label Studio" if project.connection.url else "kept for the next request"
            return {"error": f"still running after {self.settings.predict_seconds:.0f} s: {where} when done"}
        exc = job.exception()
        if exc is None:
            self.counts["predicted"] += 1
            return job.result()
        self.counts["failed"] += 1
        return {"error": task_error(exc)}

    def _background_done(self, project: Project, task_id, job: asyncio.Future, version: str) -> None:
        if job.cancelled() or job.exception() is not None:
            self.counts["failed"] += 1
            log.warning(
                "label studio task %s: %s",
                task_id,
                task_error(job.exception()) if not job.cancelled() else "cancelled",
            )
            return
        prediction = job.result()
        self.finished[(project.id, task_id, version)] = prediction
        while len(self.finished) > 4096:
            self.finished.popitem(last=False)
        if project.connection.url:
            asyncio.get_running_loop().create_task(self._post(project, task_id, prediction, version))

    async def _post(self, project: Project, task_id, prediction: dict, version: str) -> None:
        try:
            await asyncio.to_thread(project.connection.post_prediction, task_id, prediction)
            self.counts["posted"] += 1
            self.finished.pop((project.id, task_id, version), None)
        except Unreachable as exc:
            log.warning(
                "label studio task %s: prediction not posted (%s); kept for the next /predict", task_id, exc
            )

    def status(self) -> dict:
        return {"projects": sorted(self.projects), "running": len(self.running), **self.counts}


def _regions(control: ls.Control, result, allowed: set[str]) -> tuple[list, list, dict]:
    """(regions, their label confidences, {region id: (label, COCO RLE)}) of a Segment answer."""
    labels = {lab.mask_index: lab for lab in result.labels}
    regions, scores, remembered = [], [], {}
    for m in result.masks:
        lab = labels.get(m.index)
        choice = _allowed(lab, allowed) if lab is not None else None
        if choice is None:  # under min_confidence ("unknown"), or a label the config dropped
            continue
        name, score = choice
        mask = amg.decode_rle(m.rle)
        polys = outline(mask) if control.type == "polygonlabels" else None
        rid = ls.region_id()
        got = ls.regions(control, mask, m.bbox, name, score, rid, polys)
        if got:
            regions += got
            scores.append(score)
            remembered[rid] = (name, m.rle)
    return regions, scores, remembered


def _allowed(lab, allowed: set[str]) -> tuple[str, float] | None:
    """The best of a mask's labels that the config has (its first choice, else the next of top_k);
    None under min_confidence ("unknown")."""
    if lab.label in allowed:
        return lab.label, float(lab.confidence)
    if lab.label == "unknown":
        return None
    for name, score, *_ in lab.top_k:
        if name in allowed:
            return name, float(score)
    return None
