"""The files ``seglabel track`` writes from its journal: YouTube-VIS-style JSON (one annotation per
track, a COCO RLE per frame, null where the object is absent), MOT-challenge boxes (what
``motmetrics`` reads: frame and id 1-based, ``frame,id,x,y,w,h,conf,-1,-1,-1``) and an overlay MP4
(masks in each track's colour, its id at its box; H.264 through PyAV). Each is written beside its
name and moved in place whole."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def _replace(path: Path, write) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def write_ytvis(path: Path, video: Path, records: list[dict], category: str) -> Path:
    """One annotation per track; its category is the track's label on the last frame that had one
    (``category`` for a track never labelled)."""
    n = len(records)
    w, h = (records[0]["width"], records[0]["height"]) if records else (0, 0)
    tracks: dict[int, dict] = {}
    names: dict[int, str] = {}
    for t, rec in enumerate(records):
        for o in rec["objects"]:
            a = tracks.setdefault(
                o["id"], {"segmentations": [None] * n, "bboxes": [None] * n, "areas": [None] * n}
            )
            if o["present"] and o["area"]:
                a["segmentations"][t] = {"size": [h, w], "counts": o["counts"]}
                a["bboxes"][t], a["areas"][t] = o["bbox"], o["area"]
            if o.get("label"):
                names[o["id"]] = o["label"]
    categories = sorted({names.get(k, category) for k in tracks}) or [category]
    cat_id = {c: i + 1 for i, c in enumerate(categories)}
    data = {
        "info": {"description": f"seglabel track {video.name}", "note": "object ids are the track ids"},
        "videos": [{"id": 1, "name": video.name, "width": w, "height": h, "length": n,
                    "file_names": [f"{video.stem}/{t:05d}.jpg" for t in range(n)]}],
        "categories": [{"id": i, "name": c} for c, i in cat_id.items()],
        "annotations": [{"id": k, "video_id": 1, "category_id": cat_id[names.get(k, category)], "iscrowd": 0,
                         "width": w, "height": h, "length": 1, **a} for k, a in sorted(tracks.items())],
    }  # fmt: skip
    return _replace(path, lambda p: p.write_text(json.dumps(data)))


def write_mot(path: Path, records: list[dict]) -> Path:
    lines = []
    for rec in records:
        for o in rec["objects"]:
            if o["present"] and o["bbox"]:
                x, y, bw, bh = o["bbox"]
                conf = 1.0 / (1.0 + np.exp(-o["score"]))
                lines.append(
                    f"{rec['frame'] + 1},{o['id']},{x:.2f},{y:.2f},{bw:.2f},{bh:.2f},{conf:.4f},-1,-1,-1"
                )
    return _replace(path, lambda p: p.write_text("".join(line + "\n" for line in lines)))


def _colour(k: int) -> np.ndarray:
    rng = np.random.default_rng(k * 7919)
    return rng.integers(60, 256, 3).astype(np.float32)


def write_overlay(path: Path, frames: Iterable[np.ndarray], records: list[dict], fps: float) -> Path:
    import av
    from PIL import Image, ImageDraw
    from pycocotools import mask as mu

    def write(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = None
            for rgb, rec in zip(frames, records):
                h, w = rgb.shape[:2]
                if stream is None:
                    stream = container.add_stream("libx264", rate=max(1, round(fps)))
                    stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
                img = rgb.astype(np.float32)
                for o in rec["objects"]:
                    if o["present"] and o["area"]:
                        m = mu.decode({"size": [h, w], "counts": o["counts"].encode()}).astype(bool)
                        img[m] = 0.5 * img[m] + 0.5 * _colour(o["id"])
                pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
                draw = ImageDraw.Draw(pil)
                for o in rec["objects"]:
                    if o["present"] and o["bbox"]:
                        x, y, bw, bh = o["bbox"]
                        c = tuple(int(v) for v in _colour(o["id"]))
                        draw.rectangle([x, y, x + bw - 1, y + bh - 1], outline=c)
                        draw.text((x + 2, y + 1), str(o["id"]), fill=c)
                padded = np.zeros((h + h % 2, w + w % 2, 3), np.uint8)
                padded[:h, :w] = np.asarray(pil)
                for packet in stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
                    container.mux(packet)
            if stream is not None:
                for packet in stream.encode():
                    container.mux(packet)

    return _replace(path, write)
