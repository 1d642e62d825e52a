"""``seglabel eval-labels DIR``: zero-shot against k-shot label accuracy on an ImageFolder (one folder
per label, its images inside), through the public API only.

Every image is segmented once, with one box prompt around the whole image (one mask each, labelled
as masks are). Per label, a fixed-seed shuffle splits the images into a held-out test half and a
pool of examples. Zero-shot: the test answers relabelled against the label names. k-shot: a
temporary vocabulary gets the first k pool images' masks of every label as examples (AddExamples
by request_id: no CLIP run), and the test answers are relabelled against it. Relabelling reuses the
kept crop embeddings, so every k costs milliseconds, not a second pass over the images."""

from __future__ import annotations

import os
import random
from pathlib import Path

from PIL import Image

from seglabel_client.client import SegmenterClient, example

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def image_folder(root: str | os.PathLike) -> dict[str, list[Path]]:
    """label -> its images (sorted), from ``root/<label>/*``; labels with no image are left out."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            out[d.name] = files
    if len(out) < 2:
        raise ValueError(f"{root}: an ImageFolder needs at least two label folders with images")
    return out


def split(classes: dict[str, list[Path]], seed: int, test_fraction: float) -> tuple[dict, dict]:
    """(pool, test) per label: a shuffle with ``seed``, the last ``test_fraction`` held out (at least
    one image on each side)."""
    pool, test = {}, {}
    for label, files in classes.items():
        files = list(files)
        random.Random(f"{seed}:{label}").shuffle(files)
        n_test = min(len(files) - 1, max(1, round(len(files) * test_fraction)))
        pool[label], test[label] = files[: len(files) - n_test], files[len(files) - n_test :]
    return pool, test


def evaluate_labels(
    client: SegmenterClient,
    root: str | os.PathLike,
    shots=(1, 2, 4, 8, 16),
    seed: int = 0,
    test_fraction: float = 0.5,
    alpha: float = 0.0,
    beta: float = 0.0,
    progress=None,
) -> dict:
    """Accuracy (top-1) on the held-out images: zero-shot, then k-shot for each k the pools allow."""
    classes = image_folder(root)
    labels = list(classes)
    pool, test = split(classes, seed, test_fraction)
    answers: dict[Path, str] = {}
    todo = [p for files in classes.values() for p in files]
    for i, path in enumerate(todo):
        with Image.open(path) as im:
            w, h = im.size
        up = client.upload(path.read_bytes(), filename=path.name)
        resp = client.segment(file_id=up.file_id, prompt_type="box", boxes=[(0, 0, w, h)], labels=labels,
                              overlay=False, top_k=1)  # fmt: skip
        if not resp.request_id:
            raise RuntimeError("the server kept no answer (labels unavailable, or --answer-cache-mb 0)")
        answers[path] = resp.request_id
        if progress:
            progress(i + 1, len(todo))

    def accuracy(**kw) -> float:
        right = total = 0
        for label, files in test.items():
            for path in files:
                got = client.relabel(answers[path], top_k=1, **kw).labels[0].label
                right += got == label
                total += 1
        return right / total

    info = client.server_info()
    rows: list[dict] = [{"shots": 0, "accuracy": accuracy(labels=labels)}]
    name = f"eval-labels-{os.getpid()}"
    try:
        for k in shots:
            if any(len(files) < k for files in pool.values()):
                rows.append({"shots": k, "accuracy": None, "note": "fewer pool images than k for some label"})
                continue
            client.create_vocabulary(name, labels, replace=True, alpha=alpha, beta=beta)
            for label in labels:
                client.add_examples(name, label, [example(request_id=answers[p]) for p in pool[label][:k]])
            rows.append({"shots": k, "accuracy": accuracy(vocabulary_name=name)})
        vocab = client.get_vocabulary(name) if len(rows) > 1 else None
    finally:
        try:
            client.delete_vocabulary(name)
        except Exception:
            pass
    return {
        "labels": len(labels),
        "test_images": sum(len(v) for v in test.values()),
        "pool_images": sum(len(v) for v in pool.values()),
        "seed": seed,
        "alpha": vocab.alpha if vocab else alpha,
        "beta": vocab.beta if vocab else beta,
        "clip_model": info.clip_model,
        "random_weights": info.random_weights,
        "rows": rows,
    }


def format_report(r: dict) -> str:
    lines = [
        f"{r['labels']} labels, {r['test_images']} held-out images, {r['pool_images']} in the example pool "
        f"(seed {r['seed']}); CLIP {r['clip_model']}, Tip-Adapter alpha {r['alpha']:g} beta {r['beta']:g}",
        f"  {'examples per label':>18}  accuracy",
    ]
    for row in r["rows"]:
        acc = "n/a" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        what = "zero-shot" if row["shots"] == 0 else str(row["shots"])
        lines.append(f"  {what:>18}  {acc}" + (f"  ({row['note']})" if row.get("note") else ""))
    if r["random_weights"]:
        lines.append("  note: the server runs RANDOM WEIGHTS: these accuracies say nothing of label quality")
    return "\n".join(lines)
