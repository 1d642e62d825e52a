"""``seglabel track``'s library: a video file through a server's ``Track`` stream, annotations out.

The video is decoded with PyAV frame by frame (never all in memory) and each frame sent as JPEG
with the prompts of that frame; each answer is journalled (``OUT/track.journal.jsonl``, one line
per frame), and the outputs are written from the journal: YouTube-VIS-style JSON (a per-frame RLE
per track), MOT-challenge boxes and an overlay MP4 with ids. Resumable: the same command continues
after a kill and gives the same files: the session's memory is rebuilt by sending the journalled
frames again (their answers checked against the journal, not written twice), then the run goes
on. ``--detect-every N``: the server's grid on every N-th frame starts tracks for the masks that
no tracked object covers (``TrackRequest.detect``)."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seglabel_client.client import SegmenterClient
from seglabel_client.track import track_frame, track_open, track_prompt

JOURNAL, YTVIS, MOT, OVERLAY = "track.journal.jsonl", "tracks.ytvis.json", "tracks.mot.txt", "overlay.mp4"


@dataclass
class VideoPrompt:
    """A new object on ``frame``: a box (x0, y0, x1, y1) or a click (x, y, positive)."""

    frame: int
    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float, bool] | None = None

    @classmethod
    def parse(cls, kind: str, text: str) -> VideoPrompt:
        """``FRAME:x0,y0,x1,y1`` (box) or ``FRAME:x,y[,positive]`` (point; positive 1/0)."""
        frame, _, rest = text.partition(":")
        try:
            values = [float(v) for v in rest.split(",")]
            f = int(frame)
        except ValueError:
            raise ValueError(f"--{kind} {text!r}: FRAME:numbers") from None
        if kind == "box" and len(values) == 4:
            return cls(f, box=(values[0], values[1], values[2], values[3]))
        if kind == "point" and len(values) in (2, 3):
            return cls(f, point=(values[0], values[1], bool(values[2]) if len(values) == 3 else True))
        raise ValueError(f"--{kind} {text!r}: a box is FRAME:x0,y0,x1,y1, a point FRAME:x,y[,positive]")


@dataclass
class TrackJob:
    prompts: list[VideoPrompt] = field(default_factory=list)
    detect_every: int = 0
    formats: tuple[str, ...] = ("ytvis", "mot", "overlay")
    category: str = "object"
    jpeg_quality: int = 95
    detect_options: Any = None  # SegmentOptions of the keyframes' grid Segment (None: the server's defaults)
    labels: tuple[str, ...] = ()  # the tracks' labels: a list ...
    vocabulary_name: str = ""  # ... or a stored vocabulary (neither: no labels; the category is ``category``)


def frames_of(path: str | Path) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a video file, decoded one at a time (PyAV). A truncated file ends
    where its last decodable frame does; an undecodable one raises ValueError."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"{path}: not a video PyAV can open ({exc})") from None
    with container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        try:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
        except av.error.InvalidDataError:
            return  # truncated: the frames before the damage were given


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _file_id(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _record(reply) -> dict:
    return {"frame": reply.frame_index, "width": reply.width, "height": reply.height,
            "objects": [{"id": o.object_id, "counts": o.rle.counts, "bbox": list(o.bbox), "area": o.area,
                         "score": round(o.object_score, 5), "present": o.present, "detected": o.detected,
                         "label": o.label.label if o.HasField("label") else None,
                         "label_confidence": round(o.label.confidence, 5) if o.HasField("label") else None}
                        for o in reply.objects]}  # fmt: skip


def track_video(video: str | Path, out: str | Path, target: str, job: TrackJob, *, restart: bool = False,
                progress: Callable[[int, float], None] | None = None, timeout: float | None = None,
                tls_ca=None, token=None) -> dict:  # fmt: skip
    """Track ``video``'s objects through the server at ``target`` into ``out``; returns the report."""
    video, out = Path(video), Path(out)
    next(frames_of(video), None)  # an unreadable file is refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    head = {"video": str(video.resolve()), "sha256": _file_id(video),
            "prompts": [asdict(p) for p in job.prompts], "detect_every": job.detect_every,
            "labels": list(job.labels), "vocabulary_name": job.vocabulary_name}  # fmt: skip
    head = json.loads(json.dumps(head))  # as the journal reads back (tuples become lists)
    journal = out / JOURNAL
    done: list[dict] = []
    if journal.exists() and not restart:
        lines = journal.read_text().splitlines()
        if lines and json.loads(lines[0]) != head:
            raise ValueError(f"{journal} is another video's or other prompts' run: use --restart")
        done = [json.loads(x) for x in lines[1:]]
    if not done:
        journal.write_text(json.dumps(head) + "\n")
    t0 = time.monotonic()
    with SegmenterClient(target, timeout=timeout, tls_ca=tls_ca, token=token) as c, open(journal, "a") as log:
        info = c.server_info()
        sent: dict[int, list[dict]] = {}  # prompts sent with each frame, journalled with its answer
        failed: list[BaseException] = []  # raised in the request thread: re-raised here, after the stream

        def requests():
            try:
                yield from frame_requests()
            except Exception as exc:
                failed.append(exc)

        def frame_requests():
            yield track_open("file", vocabulary=job.labels, vocabulary_name=job.vocabulary_name,
                             detect_options=job.detect_options if job.detect_every else None)  # fmt: skip
            for t, rgb in enumerate(frames_of(video)):
                if t < len(done):  # replayed: the prompts the journal says were sent
                    prompts = [track_prompt(p["id"], [tuple(p["point"])] if p["point"] else (), p["box"])
                               for p in done[t].get("prompts", ())]  # fmt: skip
                else:
                    prompts = [track_prompt(i + 1, [p.point] if p.point else (), p.box)
                               for i, p in enumerate(job.prompts) if p.frame == t]  # fmt: skip
                sent[t] = [{"id": p.object_id, "point": [p.points[0].x, p.points[0].y, p.points[0].positive]
                            if p.points else None, "box": [p.box.x0, p.box.y0, p.box.x1, p.box.y1]
                            if p.HasField("box") else None} for p in prompts]  # fmt: skip
                detect = bool(job.detect_every) and t % job.detect_every == 0
                yield track_frame(t, _jpeg(rgb, job.jpeg_quality), prompts, detect=detect)

        n = 0
        for reply in c.track(requests()):
            rec = {**_record(reply), "prompts": sent.pop(reply.frame_index, [])}
            if rec["frame"] < len(done):
                if rec["objects"] != done[rec["frame"]]["objects"]:
                    raise RuntimeError(f"frame {rec['frame']}: the server answers otherwise than the journal")
            else:
                log.write(json.dumps(rec) + "\n")
                log.flush()
                n += 1
            if progress is not None:
                progress(rec["frame"] + 1, time.monotonic() - t0)
        if failed:
            raise failed[0]
    records = [json.loads(x) for x in journal.read_text().splitlines()[1:]]
    outputs = write_outputs(video, out, records, job, fps_hint=None)
    seconds = time.monotonic() - t0
    return {"frames": len(records), "resumed_from_journal": len(done), "tracked_now": n,
            "objects": sorted({o["id"] for r in records for o in r["objects"]}), "outputs": outputs,
            "frames_per_s": n / seconds if seconds > 0 else 0.0, "random_weights": info.random_weights}  # fmt: skip


def write_outputs(video: Path, out: Path, records: list[dict], job: TrackJob, fps_hint=None) -> dict:
    """The formats of ``job`` from the journal's records (written whole, then moved in place)."""
    from seglabel_client.video_formats import write_mot, write_overlay, write_ytvis

    outputs = {}
    if "ytvis" in job.formats:
        outputs["ytvis"] = str(write_ytvis(out / YTVIS, video, records, job.category))
    if "mot" in job.formats:
        outputs["mot"] = str(write_mot(out / MOT, records))
    if "overlay" in job.formats:
        outputs["overlay"] = str(write_overlay(out / OVERLAY, frames_of(video), records, _fps(video)))
    return outputs


def _fps(video: Path) -> float:
    import av

    with av.open(str(video)) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else 25.0
