"""A folder as a labelling team's really is: nested folders, unicode names, the same bytes under
two names, files that are not images and images that cannot be decoded (tests and benchmarks)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def crops(photo: np.ndarray, n: int, size=(96, 128)) -> list[Image.Image]:
    """n distinct crops of a photo (h, w = size), shifted and mirrored."""
    h, w = size
    out = []
    for i in range(n):
        y, x = (i * 13) % max(1, photo.shape[0] - h), (i * 29) % max(1, photo.shape[1] - w)
        crop = photo[y : y + h, x : x + w]
        out.append(Image.fromarray(np.ascontiguousarray(crop[:, ::-1] if i % 2 else crop)))
    return out


def make_folder(root: Path, photo: np.ndarray, good: int = 6) -> dict:
    """Writes the folder; returns what a run must find in it."""
    imgs = crops(photo, good + 4)
    names = []
    for i in range(good):
        sub = ("", "a/", "a/b/", "ünïcødé/")[i % 4]
        name = f"{sub}img_{i:02d}.png" if i % 3 else f"{sub}фото {i:02d}.jpg"
        _save(
            imgs[i],
            root / name,
            "PNG" if name.endswith(".png") else "JPEG",
            **({} if name.endswith(".png") else {"quality": 92}),
        )
        names.append(name)
    dup = (root / names[0]).read_bytes()
    (root / "copies").mkdir()
    (root / "copies" / "same_bytes.png").write_bytes(dup)  # the same bytes under another name
    _save(imgs[good].convert("L"), root / "gray.png", "PNG")
    rgba = imgs[good + 1].convert("RGBA")
    rgba.putalpha(128)
    _save(rgba, root / "rgba.png", "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed: 128x96 stored, 96x128 shown
    _save(imgs[good + 2], root / "rotated.jpg", "JPEG", exif=exif.tobytes())
    _save(imgs[good + 3].resize((8, 8)), root / "tiny_8x8.png", "PNG")
    full = _save(imgs[0], root / "broken" / "truncated.jpg", "JPEG")
    (root / "broken" / "truncated.jpg").write_bytes(full[: len(full) // 3])
    (root / "broken" / "text.png").write_text("this is not an image\n")
    (root / "notes.txt").write_text("not an image either\n")
    (root / "a" / "labels.json").write_text("{}\n")
    return {
        "images": good + 1 + 4,  # + the duplicate name, gray, rgba, rotated, 8x8
        "distinct": good + 4,
        "names": sorted(
            [*names, "copies/same_bytes.png", "gray.png", "rgba.png", "rotated.jpg", "tiny_8x8.png"]
        ),
        "duplicate": (names[0], "copies/same_bytes.png"),
        "failed": {"broken/truncated.jpg", "broken/text.png"},
        "skipped": 2,
        "rotated": ("rotated.jpg", 96, 128),  # (name, width, height as displayed)
    }
