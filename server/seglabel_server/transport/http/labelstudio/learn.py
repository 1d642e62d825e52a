"""The loop that learns from a team's corrections. An annotation (Label Studio's
``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` webhook) is compared with what seglabel predicted
for its task; what the annotator changed becomes examples of the project's vocabulary:

- a predicted region relabelled: a positive for the new label, a negative for the old one;
- a predicted region deleted: a negative for its label;
- a region the annotator drew: a positive for its label;
- a predicted region accepted as it was: nothing (the model already says so).

The examples carry the annotation as their origin (``label-studio:<project>:<annotation>``): an
update replaces them, a deleted annotation removes them, and ``RemoveExamples`` undoes any of them
like any other example. Label Studio waits 1 s for a webhook, so the work runs after the answer."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np
from seglabel_api.datasets.annotations import polygons_rle
from seglabel_api.formats import labelstudio as ls

from seglabel_server import amg
from seglabel_server.errors import NotFound
from seglabel_server.transport.http.labelstudio.tasks import parse, task_ref
from seglabel_server.types import ExampleIn

log = logging.getLogger(__name__)
LEARN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
FORGET_EVENTS = ("ANNOTATIONS_DELETED",)


@dataclass(frozen=True)
class Correction:
    label: str
    negative: bool
    rle: dict | None = None  # the predicted mask (COCO RLE) ...
    region: dict | None = None  # ... or the annotation's region


def base_id(region: dict) -> str:
    return str(region.get("id", "")).split("-", 1)[0]  # a mask's further polygons are "<id>-2", ...


def started_from(predictions: list[dict], result: list[dict]) -> dict:
    """Of a task's last predictions, the one the annotation started from: the one whose region ids
    it shares most ({} when it shares none: drawn from scratch)."""
    ids = {base_id(r) for r in result if isinstance(r, dict)}
    best = max(predictions, key=lambda p: len(ids & p.keys()), default={})
    return best if ids & best.keys() else {}


def corrections(predicted: dict[str, tuple[str, dict]], result: list[dict]) -> list[Correction]:
    """What an annotation's ``result`` changed of the ``predicted`` regions ({region id: (label,
    COCO RLE)}); regions of other tags (choices, text) are not looked at."""
    out, seen = [], set()
    for r in result:
        if not isinstance(r, dict):
            continue
        label = ls.region_label(r)
        if label is None or r.get("type") not in ls.OUTPUT_TAGS.values():
            continue
        base = base_id(r)
        before = predicted.get(base)
        if before is None:
            out.append(Correction(label, False, region=r))
            continue
        seen.add(base)
        if before[0] != label:
            out += [Correction(label, False, region=r), Correction(before[0], True, rle=before[1])]
    for rid, (label, rle) in predicted.items():
        if rid not in seen:
            out.append(Correction(label, True, rle=rle))
    return out


def example(c: Correction, file_id: str, origin: str) -> ExampleIn:
    """A correction as an example of the task's uploaded image (a mask, or a rectangle's box)."""
    if c.rle is not None:
        return ExampleIn(file_id=file_id, mask=dict(c.rle), negative=c.negative, origin=origin)
    region = c.region or {}
    got = ls.region_geometry(region)
    if got is None:
        raise ValueError(f"a {region.get('type')} region is not an example")
    kind, geometry = got
    h, w = int(region["original_height"]), int(region["original_width"])
    if kind == "box":
        x0, y0, x1, y1 = (float(v) for v in np.asarray(geometry, np.float64).ravel()[:4])
        return ExampleIn(file_id=file_id, box=(x0, y0, x1, y1), negative=c.negative, origin=origin)
    if kind == "polygon":
        rle = polygons_rle([np.asarray(geometry).ravel().tolist()], h, w)
        mask = amg.decode_rle({"size": rle["size"], "counts": rle["counts"].decode("ascii")})
    else:
        mask = np.asarray(geometry, bool)
    if not mask.any():
        raise ValueError("the region covers no pixel")
    return ExampleIn(file_id=file_id, mask=amg.encode_rle(mask), negative=c.negative, origin=origin)


async def learn(backend, body: dict) -> dict:
    """Apply one webhook (one at a time per project); returns what it did (also logged)."""
    project = backend.project(body.get("project"))
    async with backend.learning.setdefault(project.id, asyncio.Lock()):
        return await _learn(backend, project, body)


async def _learn(backend, project, body: dict) -> dict:
    action = body.get("action")
    if action in FORGET_EVENTS:
        ids = [a.get("id") for a in body.get("annotations") or [] if isinstance(a, dict)]
        removed = sum([await forget(backend, project, f"label-studio:{project.id}:{i}") for i in ids])
        return {"action": action, "removed": removed}
    annotation, task = body.get("annotation") or {}, body.get("task") or {}
    config = parse((body.get("project") or {}).get("label_config"))
    origin = f"label-studio:{project.id}:{annotation.get('id')}"
    removed = await forget(backend, project, origin)
    if annotation.get("was_cancelled"):
        return {"action": action, "removed": removed, "added": 0}
    task_id, ref = task_ref(task, config.output)
    result = annotation.get("result") or []
    fixes = corrections(started_from(backend.predicted.get((project.id, task_id), []), result), result)
    if not fixes:
        return {"action": action, "removed": removed, "added": 0}
    file_id, _, _ = await backend.image(project, ref, task_id, fresh=True)
    by_label: dict[str, list[ExampleIn]] = {}
    skipped = 0
    for c in fixes:
        try:
            by_label.setdefault(c.label, []).append(example(c, file_id, origin))
        except (ValueError, KeyError, TypeError) as exc:
            skipped += 1
            log.warning("label studio annotation %s: a region skipped (%s)", annotation.get("id"), exc)
    added = 0
    await backend.vocabulary(project, config)
    for label, examples in by_label.items():
        _, ids = await backend.gateway.add_examples(project.vocabulary, label, examples)
        added += len(ids)
    backend.counts["examples"] += added
    log.info(
        "label studio %s task %s: %d examples (%d replaced, %d skipped)",
        action,
        task_id,
        added,
        removed,
        skipped,
    )
    return {"action": action, "removed": removed, "added": added, "skipped": skipped}


async def forget(backend, project, origin: str) -> int:
    """Remove the examples an annotation added (by their origin); how many."""
    try:
        vocab, _ = await backend.gateway.get_vocabulary(project.vocabulary)
    except NotFound:
        return 0
    removed = 0
    for lab in vocab.labels:
        ids = [e.id for e in lab.examples if e.source.get("origin") == origin]
        if ids:
            await backend.gateway.remove_examples(project.vocabulary, lab.name, ids, False)
            removed += len(ids)
    return removed
