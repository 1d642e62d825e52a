"""Memory as a budget: each admitted request is charged an upper bound of the memory it can hold at
its peak, and a request that does not fit is refused before any work (RESOURCE_EXHAUSTED, saying
which limit). The bound follows what the pipeline keeps per request; it is deliberately generous."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from seglabel_server.errors import LimitExceeded, Overloaded
from seglabel_server.types import SegmentOptions

MB = 1 << 20


def machine_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


# Working memory of the models' runtime for one image, as a multiple of the SAM2 encoder input's
# bytes: ONNX Runtime's CPU arena (shared by every model) holds 725 MB after an encoder run of the
# full-size hiera-tiny at 1024 px, and a 1-mask grid request from an idle server peaks 891 MB over it
# (features and decoder outputs counted apart below; scripts/bench_memory.py): 72 x 12.6 MB = 906 MB.
# The decoder's batch stays below it (513 MB for 16 prompts) in the same arena.
ENCODER_WORKING_X = 72


def request_bytes(
    p: SegmentOptions,
    width: int,
    height: int,
    sam: dict,
    clip: dict | None,
    decoder_batch: int,
    clip_batch: int,
    decoder_window: int = 2,
) -> int:
    """Upper bound of one request's peak memory (bytes) for resolved parameters ``p``, following
    what the pipeline holds at once: its image and features, a window of decoder outputs, the
    candidates that can still be in the answer (``pipeline.masks.CandidateSet``: ``max_masks`` of
    them with NMS off, every prompt's 3 with NMS on), one chunk of full-resolution masks and the
    answer's RLE. The runtime's working memory is :func:`runtime_bytes`."""
    pixels = width * height
    s, c, low = sam["image_size"], sam.get("embed_dim", 256), sam["low_res_size"]
    total = 2 * pixels * 3  # decoded image (+ a conversion copy)
    total += 2 * 3 * s * s * 4  # encoder input (+ resize)
    total += 4 * (c * (s // 16) ** 2 + c // 8 * (s // 4) ** 2 + c // 4 * (s // 8) ** 2)  # features
    if p.prompt_type == "grid":
        prompts, per_prompt = p.points_per_side**2, 3
    else:
        prompts, per_prompt = max(len(p.boxes), 1), 3
    # Decoder outputs in flight (3 candidates + the single mask per prompt).
    total += decoder_window * min(prompts, decoder_batch) * (per_prompt + 1) * low * low * 4 + prompts * 64
    candidates = prompts * per_prompt
    if p.prompt_type == "grid" and p.box_nms_thresh is not None and p.box_nms_thresh >= 1.0:
        candidates = min(candidates, p.max_masks)
    total += candidates * (low * low * 4 + 64)
    kept = min(p.max_masks, prompts * per_prompt)
    # The answer: RLE and its protobuf (bounded by a quarter of the mask's pixels); the
    # full-resolution masks of one chunk at a time, or of every mask when the overlay needs them.
    chunk = clip_batch if clip is not None and not p.skip_labels else 64
    total += kept * (pixels // 4)
    total += (kept if p.return_overlay else min(kept, chunk)) * pixels
    if clip is not None and not p.skip_labels:
        isz = clip["image_size"]
        total += 2 * min(kept, clip_batch) * 3 * isz * isz * 4
    if p.return_overlay:
        total += pixels * (3 * 4 + 2 + 3)  # float canvas, edge masks, PNG
    return total


def runtime_bytes(sam: dict) -> int:
    """The models' working memory for one image when they run on the host (one shared arena,
    ``backends.onnxruntime``): what an encoder run of one more image adds at most. Scaled by the
    model's width (``embed_dim`` / 256, 1 for every SAM2.1 size), so that a shrunken model is not
    charged a full-size encoder's memory."""
    width = sam.get("embed_dim", 256) / 256
    return int(ENCODER_WORKING_X * 3 * sam["image_size"] ** 2 * 4 * width)


def depth_bytes(width: int, height: int, depth: dict) -> int:
    """Depth: model input and output, the map at the image's size (float32, float16 for the
    answer), the colour index, RGB and PNG."""
    s = depth["image_size"]
    return 2 * 3 * s * s * 4 + s * s * 4 + width * height * (4 + 2 + 1 + 3 + 3)


# rapidocr scales an image to at most 2000 px on its long side (and its short side up to 736).
_OCR_SIDE = 2000


def text_bytes(width: int, height: int) -> int:
    """OCR: the BGR copy, and rapidocr's detection input (float32, with its normalisation copies),
    probability map and dilated mask at its working size; line crops are small next to these."""
    work = _OCR_SIDE * _OCR_SIDE
    return width * height * 3 * 2 + work * (3 * 4 * 3 + 4 + 2)


@dataclass
class Charge:
    budget: MemoryBudget
    nbytes: int
    released: bool = False
    on_release: Callable[[], None] | None = None

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget._release(self.nbytes)
            if self.on_release is not None:
                self.on_release()


class MemoryBudget:
    """Bytes charged by admitted requests, never more than ``limit`` at once."""

    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self.used = 0
        self.lock = threading.Lock()

    def charge(self, nbytes: int, on_release: Callable[[], None] | None = None, headroom: int = 0) -> Charge:
        """``nbytes`` charged, leaving ``headroom`` bytes free (the reserve of better classes):
        LimitExceeded when it could never fit, Overloaded while the budget is full."""
        if nbytes > self.limit:
            raise LimitExceeded(
                f"request needs up to {nbytes // MB} MB, more than the server's whole memory budget "
                f"of {self.limit // MB} MB (--max-memory-mb): use a smaller image, fewer points or max_masks"
            )
        with self.lock:
            if self.used + nbytes > self.limit - headroom:
                kept = f" ({headroom // MB} MB kept for better request classes)" if headroom else ""
                raise Overloaded(
                    f"memory budget: {self.used // MB} of {self.limit // MB} MB in use{kept}, the request "
                    f"needs up to {nbytes // MB} MB; retry later"
                )
            self.used += nbytes
        return Charge(self, nbytes, on_release=on_release)

    def _release(self, nbytes: int) -> None:
        with self.lock:
            self.used -= nbytes


class RuntimeMemory:
    """The models' working memory on the host as budget charges, one share (:func:`runtime_bytes`)
    per image the encoder runs at once, at most ``max_shares`` (an encoder batch: more requests in
    flight wait for the encoder instead of growing the arena).

    Where the runtime keeps an arena (``kept``), memory it grew to stays allocated between requests
    until the server gives it back: the shares it holds are charged once, when it grows, and stay
    charged until :meth:`released`; a request that finds a share already held is charged nothing
    for it. Without an arena each request's share is its own, released with it."""

    def __init__(self, budget: MemoryBudget, share_bytes: int, max_shares: int, kept: bool):
        self.budget, self.share, self.max_shares, self.kept = budget, share_bytes, max_shares, kept
        self.in_use = 0  # requests holding a share now
        self.held: list[Charge] = []  # shares the arena holds (kept)
        self.lock = threading.Lock()  # image headers are read in threads

    @property
    def held_shares(self) -> int:
        return len(self.held)

    @property
    def held_bytes(self) -> int:
        """What the arena's shares hold charged now (requests' own charges aside)."""
        return sum(c.nbytes for c in self.held)

    def take(self, headroom: int = 0) -> Charge | None:
        """One request's share; None when an encoder batch of requests holds them already. Raises
        like :meth:`MemoryBudget.charge` when the arena would have to grow past the budget."""
        with self.lock:
            if self.in_use >= self.max_shares:
                return None
            if not self.kept:
                charge = self.budget.charge(self.share, self._put, headroom)
            else:
                if self.in_use >= len(self.held):
                    self.held.append(self.budget.charge(self.share, headroom=headroom))
                charge = Charge(self.budget, 0, on_release=self._put)
            self.in_use += 1
            return charge

    def _put(self) -> None:
        with self.lock:
            self.in_use -= 1

    def filled(self, shares: int = 1) -> None:
        """The arena holds ``shares`` images' working memory now (a warm-up or reserve run)."""
        if not self.kept:
            return
        with self.lock:
            while len(self.held) < min(shares, self.max_shares):
                try:
                    self.held.append(self.budget.charge(self.share))
                except (LimitExceeded, Overloaded):  # a budget smaller than one image: counted by requests
                    return

    def released(self) -> None:
        """The arena gave back what no request uses (the shares in use stay charged)."""
        with self.lock:
            while len(self.held) > self.in_use:
                self.held.pop().release()
