"""A request's image: its bytes (an upload, or sent inline) checked against the limits, its header
read before its pixels (so that admission charges the request by its size first), decoded once with
its EXIF orientation applied, and kept by sha256 beside its embedding (the embedding cache), so that
a click on an image already seen decodes nothing. Disk and network reads run off the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from seglabel_server.errors import InvalidArgument, LimitExceeded, UnknownFile
from seglabel_server.models import images
from seglabel_server.storage.embedding_cache import EmbeddingCache
from seglabel_server.storage.uploads import UploadStore, check_file_id


@dataclass
class OpenedImage:
    """An image whose size is known: decoded already (``pixels``, from the cache), or opened with
    its pixels still to decode (``opened``). ``key``: the sha256 of its bytes (an upload's file_id)."""

    width: int
    height: int
    key: str
    started: float  # time.perf_counter() when it was asked for
    pixels: np.ndarray | None = None
    opened: Image.Image | None = None


class ImageSource:
    def __init__(self, files: UploadStore, max_bytes: int, max_pixels: int):
        self.files, self.max_bytes, self.max_pixels = files, max_bytes, max_pixels
        self.cache: EmbeddingCache | None = None  # the loaded models' cache (set when they load)

    def check_size(self, data: bytes) -> None:
        if len(data) > self.max_bytes:
            raise LimitExceeded(f"image of {len(data)} bytes is over the limit of {self.max_bytes}")

    def upload(self, data: bytes, filename: str = "") -> tuple[str, int, int]:
        """(file_id, width, height) of an image stored for later requests (decoded once: only
        images are stored)."""
        self.check_size(data)
        h, w = images.decode_image(data, self.max_pixels).shape[:2]
        return self.files.put(data, filename), w, h

    async def open(self, file_id: str | None, data: bytes | None, what: str) -> OpenedImage:
        """A request's image (an upload's ``file_id``, or its bytes), opened: size known, pixels
        decoded only when the cache has them already."""
        started = time.perf_counter()
        if file_id:
            check_file_id(file_id)
        elif not data:
            raise InvalidArgument(f"{what} needs file_id or image bytes")
        cache = self.cache

        def read() -> OpenedImage:
            raw = self.files.get(file_id) if file_id else data  # disk or network: off the event loop
            self.check_size(raw)
            key = file_id or hashlib.sha256(raw).hexdigest()  # the embedding's key, an answer's source
            pixels = cache.image(key) if cache is not None else None
            if pixels is not None:  # seen before: decoded already
                return OpenedImage(pixels.shape[1], pixels.shape[0], key, started, pixels=pixels)
            img = images.open_image(raw, self.max_pixels)
            return OpenedImage(img.size[0], img.size[1], key, started, opened=img)

        return await asyncio.to_thread(read)

    async def decode(self, image: OpenedImage) -> tuple[np.ndarray, float]:
        """(RGB pixels, milliseconds since the image was asked for); kept in the cache by its key."""
        if image.pixels is None:
            image.pixels = await asyncio.to_thread(images.decode_opened, image.opened, self.max_pixels)
            image.opened = None
            if self.cache is not None:
                self.cache.put_image(image.key, image.pixels)
        return image.pixels, (time.perf_counter() - image.started) * 1000.0

    async def read(self, file_id: str) -> np.ndarray:
        """An upload's pixels, not cached (a vocabulary's example); InvalidArgument when it is not
        there."""
        try:
            check_file_id(file_id)
            data = await asyncio.to_thread(self.files.get, file_id)
        except UnknownFile as exc:
            raise InvalidArgument(str(exc)) from None
        return await asyncio.to_thread(images.decode_image, data, self.max_pixels)
