"""The job's outputs, written from the journal in image-id order without holding the dataset in
memory, each under a temporary name and renamed into place: COCO instance segmentation, YOLO-seg
(Ultralytics' layout) and the run's report."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from seglabel_api.datasets.files import Inventory
from seglabel_api.datasets.journal import Journal


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def done_images(inv: Inventory, journal: Journal) -> list[tuple[int, str, str]]:
    """(image id, file name, sha) of every labelled name, by id."""
    out: list[tuple[int, str, str]] = []
    for item in inv.items:
        ok = journal.records.get(item.sha, (False,))[0]
        if ok:
            out.extend((i, n, item.sha) for i, n in zip(item.ids, item.names))
    return sorted(out)


def _records(journal: Journal, images: list[tuple[int, str, str]]) -> Iterator[tuple[int, str, dict]]:
    for (image_id, name, _), rec in zip(images, journal.read(sha for *_, sha in images)):
        yield image_id, name, rec


def write_coco(path: Path, inv: Inventory, journal: Journal, categories: list[str], info: dict) -> int:
    """COCO instance segmentation at ``path``; returns the number of annotations. Annotation ids
    follow image ids and each image's mask order: the same journal gives the same file."""
    cat_id = {name: i + 1 for i, name in enumerate(categories)}
    images = done_images(inv, journal)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        f.write('{"info": ' + json.dumps(info, ensure_ascii=False) + ', "licenses": [], "categories": ')
        f.write(json.dumps([{"id": i + 1, "name": c, "supercategory": ""} for i, c in enumerate(categories)]))
        f.write(', "images": [')
        for k, (image_id, name, sha) in enumerate(images):
            _, _, w, h = journal.records[sha]
            entry = {"id": image_id, "file_name": name, "width": w, "height": h}
            f.write((",\n" if k else "\n") + json.dumps(entry, ensure_ascii=False))
        f.write('], "annotations": [')
        for image_id, _, rec in _records(journal, images):
            for ann in rec["anns"]:
                n += 1
                out = {
                    "id": n,
                    "image_id": image_id,
                    "category_id": cat_id[ann["label"]],
                    "segmentation": ann["segmentation"],
                    "area": ann["area"],
                    "bbox": ann["bbox"],
                    "iscrowd": 0,
                    "score": ann["score"],
                    "predicted_iou": ann["predicted_iou"],
                }
                for extra in ("depth", "text"):
                    if extra in ann:
                        out[extra] = ann[extra]
                f.write((",\n" if n > 1 else "\n") + json.dumps(out, ensure_ascii=False))
        f.write("]}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def write_yolo(
    folder: Path, root: Path | None, inv: Inventory, journal: Journal, categories: list[str]
) -> int:
    """Ultralytics' YOLO-seg layout in ``folder``: ``images`` (a link to the labelled folder
    ``root``; none when ``root`` is None: the images are the user's to put there),
    ``labels/<same tree>/<stem>.txt`` with one ``class x1 y1 x2 y2 ...`` line per object
    (normalised), an empty file for an image without objects, and ``data.yaml``. Built beside
    ``folder`` and swapped in whole. Returns the number of label lines."""
    cls = {name: i for i, name in enumerate(categories)}
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "labels").mkdir(parents=True)
    if root is not None:
        os.symlink(root.resolve(), tmp / "images", target_is_directory=True)
    n = 0
    for _, name, rec in _records(journal, done_images(inv, journal)):
        lines = []
        for ann in rec["anns"]:
            if len(ann.get("yolo", ())) >= 6:
                lines.append(" ".join([str(cls[ann["label"]]), *(f"{v:.6f}" for v in ann["yolo"])]))
        dest = (tmp / "labels" / name).with_suffix(".txt")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        n += len(lines)
    names = "\n".join(f"  {i}: {json.dumps(c, ensure_ascii=False)}" for i, c in enumerate(categories))
    (tmp / "data.yaml").write_text(
        (
            "# written by seglabel label: images is a link to the labelled folder\n"
            if root is not None
            else "# written by seglabel: put the images in images/, with the same names as in labels/\n"
        )
        + (f"path: {json.dumps(str(folder.resolve()), ensure_ascii=False)}\n" if root is not None else "")
        + "train: images\nval: images\n"
        f"nc: {len(categories)}\nnames:\n{names}\n",
        encoding="utf-8",
    )
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return n


def write_report(path: Path, report: dict) -> None:
    _atomic_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
