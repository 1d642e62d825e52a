"""The images of a folder: walked recursively in a stable order, recognised by their bytes (not
their names), and grouped by content so that the same bytes under two names are labelled once."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The formats the server decodes (seglabel_server.models.images.ALLOWED_FORMATS), by signature.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp"}


def sniff(head: bytes) -> str | None:
    """The image format the first bytes announce, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    return None


@dataclass
class Item:
    """One distinct image: its content hash and every name (relative to the root, '/'-separated)
    it appears under, in walk order; ``ids`` are the COCO image ids of those names."""

    sha: str
    names: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)


@dataclass
class Inventory:
    items: list[Item]  # distinct images, in the order of their first name
    skipped: list[str]  # files that are not images (by content and name)
    unreadable: list[tuple[str, str]]  # (name, reason): named like an image, or unreadable
    files: int = 0

    @property
    def images(self) -> int:
        return sum(len(i.names) for i in self.items)


def walk(root: str | os.PathLike, exclude: Sequence[str | os.PathLike] = ()) -> list[str]:
    """Every regular file under ``root`` (recursively, symbolic links to folders not followed),
    as sorted '/'-separated relative paths; folders in ``exclude`` (the output) are left out."""
    root = Path(root)
    skip = {Path(e).resolve() for e in exclude}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (here / d).resolve() not in skip]
        for name in filenames:
            path = here / name
            if path.is_file():
                out.append(path.relative_to(root).as_posix())
    return sorted(out)


def inventory(root: str | os.PathLike, exclude: Sequence[str | os.PathLike] = ()) -> Inventory:
    """Files of ``root`` sorted into distinct images, files that are not images, and files named
    like images whose bytes are not one (reported, never sent). Image ids follow the sorted names:
    the same folder gives the same ids on every run."""
    root = Path(root)
    return inventory_of(walk(root, exclude), lambda name: open(root / name, "rb"))


def inventory_of(names: list[str], open_file) -> Inventory:
    """:func:`inventory` over any storage: sorted relative ``names`` and ``open_file(name)``, a
    binary file object (a local file, a pyarrow / fsspec stream)."""
    by_sha: dict[str, Item] = {}
    inv = Inventory(items=[], skipped=[], unreadable=[])
    next_id = 1
    for name in names:
        inv.files += 1
        try:
            with open_file(name) as f:
                head = f.read(16)
                image = sniff(head) is not None
                if image:  # hashed in the same pass
                    h = hashlib.sha256(head)
                    while block := f.read(1 << 20):
                        h.update(block)
        except OSError as exc:
            inv.unreadable.append((name, f"cannot read: {getattr(exc, 'strerror', None) or exc}"))
            continue
        if not image:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                what = "empty file" if not head else "its bytes are not an image"
                inv.unreadable.append((name, f"named like an image, but {what}"))
            else:
                inv.skipped.append(name)
            continue
        sha = h.hexdigest()
        item = by_sha.get(sha)
        if item is None:
            item = by_sha[sha] = Item(sha)
            inv.items.append(item)
        item.names.append(name)
        item.ids.append(next_id)
        next_id += 1
    return inv
