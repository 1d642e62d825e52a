"""Labels: text embeddings per vocabulary (cached), one CLIP crop per mask, zero-shot classification."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import numpy as np

from seglabel_server.models import images
from seglabel_server.models.tokenizer import ClipTokenizer
from seglabel_server.models.vocab import UNKNOWN_LABEL
from seglabel_server.pipeline.config import PipelineConfig
from seglabel_server.pipeline.cpu import CpuPool
from seglabel_server.types import LabelResult, MaskResult, RequestContext


class Labeller:
    def __init__(
        self,
        cfg: PipelineConfig,
        clip_meta: dict,
        scheduler,
        tokenizer: ClipTokenizer,
        pool: CpuPool,
    ):
        self.cfg = cfg
        self.clip = clip_meta
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.pool = pool
        self._text_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._text_locks: dict[tuple, asyncio.Lock] = {}

    async def text_embeddings(self, vocab: tuple[str, ...], ctx: RequestContext) -> np.ndarray:
        """[V, D] template-ensembled, L2-normalised label embeddings, cached per vocabulary."""
        cached = self._text_cache.get(vocab)
        if cached is not None:
            self._text_cache.move_to_end(vocab)
            return cached
        lock = self._text_locks.setdefault(vocab, asyncio.Lock())
        try:
            async with lock:
                if vocab in self._text_cache:
                    return self._text_cache[vocab]
                emb = await self._embed_vocabulary(vocab, ctx)
                self._text_cache[vocab] = emb
                while len(self._text_cache) > self.cfg.text_cache_size:
                    self._text_cache.popitem(last=False)
                return emb
        finally:
            # Waiters hold the lock object itself; the dict entry only serves newcomers.
            if not lock.locked() and self._text_locks.get(vocab) is lock:
                del self._text_locks[vocab]

    async def _embed_vocabulary(self, vocab: tuple[str, ...], ctx: RequestContext) -> np.ndarray:
        templates = self.cfg.templates
        ids = self.tokenizer([t.format(v) for v in vocab for t in templates])
        step = self.scheduler.max_batch("text")
        parts = await asyncio.gather(
            *[self.scheduler.run("text", ids[i : i + step], ctx) for i in range(0, len(ids), step)]
        )
        emb = np.concatenate(parts).reshape(len(vocab), len(templates), -1).mean(axis=1)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        return emb.astype(np.float32)

    def classify(
        self,
        image_emb: np.ndarray,
        text_emb: np.ndarray,
        vocab,
        first_index: int,
        top_k: int,
        min_confidence: float,
    ) -> list[LabelResult]:
        logits = self.clip["logit_scale"] * image_emb @ text_emb.T
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        out = []
        for row, pr in enumerate(probs):
            top = np.argsort(-pr, kind="stable")[:top_k]
            best = float(pr[top[0]])
            out.append(
                LabelResult(
                    mask_index=first_index + row,
                    label=vocab[top[0]] if best >= min_confidence else UNKNOWN_LABEL,
                    confidence=best,
                    top_k=[(vocab[j], float(pr[j])) for j in top],
                )
            )
        return out

    def crops(
        self,
        image: np.ndarray,
        masks: list[MaskResult],
        full: list[np.ndarray],
        ctx: RequestContext | None = None,
    ) -> np.ndarray:
        """[K,3,S,S] CLIP inputs, one per mask (its box with context, background faded); stops between
        masks once ``ctx`` is done."""
        c = self.clip

        def check():
            if ctx is not None:
                ctx.check()
            return True

        return np.stack(
            [
                images.clip_crop(
                    image,
                    m_full,
                    m.bbox,
                    c["image_size"],
                    c["mean"],
                    c["std"],
                    self.cfg.crop_context,
                    self.cfg.crop_background_keep,
                )
                for m, m_full in zip(masks, full)
                if check()
            ]
        )

    def crops_on_device(self, ops, image, masks: list[MaskResult], full):
        """[K,3,S,S] CLIP inputs cut in the backend's memory (``ops``: Backend.device_ops) from the
        uploaded image and the full masks there; the host twin is :meth:`crops`."""
        c = self.clip
        return ops.crops(
            image,
            full,
            [m.bbox for m in masks],
            c["image_size"],
            c["mean"],
            c["std"],
            self.cfg.crop_context,
            self.cfg.crop_background_keep,
        )

    async def crops_parallel(
        self, image: np.ndarray, masks: list[MaskResult], full: list[np.ndarray], ctx: RequestContext
    ) -> np.ndarray:
        parts = await self.pool.parallel(
            lambda r: self.crops(image, masks[r.start : r.stop], full[r.start : r.stop], ctx), len(masks)
        )
        return np.concatenate(parts)
