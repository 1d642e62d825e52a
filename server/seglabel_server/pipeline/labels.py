"""Labels: text embeddings per vocabulary (cached) and the scorer of a vocabulary (zero-shot text,
plus its examples' cache: ``scoring.py``); the masks' crops are the mask path's (``mask_path.py``)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import replace

import numpy as np

from seglabel_server.models.tokenizer import ClipTokenizer
from seglabel_server.pipeline import scoring
from seglabel_server.pipeline.config import PipelineConfig
from seglabel_server.pipeline.scoring import DEFAULT_MULTI_THRESHOLD, NEUTRAL, Scorer
from seglabel_server.types import LabelResult, LabelSpec, RequestContext
from seglabel_server.vocabulary import prompt_texts


class Labeller:
    def __init__(
        self,
        cfg: PipelineConfig,
        clip_meta: dict,
        scheduler,
        tokenizer: ClipTokenizer,
    ):
        self.cfg = cfg
        self.clip = clip_meta
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self._text_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._text_locks: dict[tuple, asyncio.Lock] = {}
        # One label's embedding, whichever vocabulary asked: a vocabulary that adds a label to another
        # (the page's "Teach into") embeds only the new label's prompts (19.8 s -> ms on the CPU).
        self._entry_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._vocab_cache: OrderedDict[tuple, Scorer] = OrderedDict()
        self._fits: OrderedDict[tuple, tuple] = OrderedDict()  # a vocabulary's MULTI thresholds, per revision
        self.logit_scale = float(clip_meta["logit_scale"])

    async def text_embeddings(
        self, entries: tuple[tuple[str, tuple[str, ...]], ...], ctx: RequestContext
    ) -> np.ndarray:
        """[V, D] L2-normalised label embeddings, each the mean over its prompts (a label's own, or
        the server's templates), cached per ``entries``."""
        cached = self._text_cache.get(entries)
        if cached is not None:
            self._text_cache.move_to_end(entries)
            return cached
        lock = self._text_locks.setdefault(entries, asyncio.Lock())
        try:
            async with lock:
                if entries in self._text_cache:
                    return self._text_cache[entries]
                emb = await self._embed_missing(entries, ctx)
                self._remember(self._text_cache, entries, emb)
                return emb
        finally:
            # Waiters hold the lock object itself; the dict entry only serves newcomers.
            if not lock.locked() and self._text_locks.get(entries) is lock:
                del self._text_locks[entries]

    async def _embed_missing(self, entries, ctx: RequestContext) -> np.ndarray:
        """[V, D] for ``entries``: the labels already embedded (in any vocabulary) from the per-label
        cache, the others computed in one batch."""
        missing = tuple(dict.fromkeys(e for e in entries if e not in self._entry_cache))
        if missing:
            for entry, row in zip(missing, await self._embed_entries(missing, ctx)):
                self._entry_cache[entry] = row
        rows = []
        for entry in entries:
            self._entry_cache.move_to_end(entry)
            rows.append(self._entry_cache[entry])
        while len(self._entry_cache) > max(self.cfg.text_cache_size * 64, len(entries)):
            self._entry_cache.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    async def _embed_entries(self, entries, ctx: RequestContext) -> np.ndarray:
        texts, owner = [], []
        for i, (name, prompts) in enumerate(entries):
            for t in prompt_texts(name, prompts, self.cfg.templates):
                texts.append(t)
                owner.append(i)
        ids = self.tokenizer(texts)
        step = self.scheduler.max_batch("text")
        parts = await asyncio.gather(
            *[self.scheduler.run("text", ids[i : i + step], ctx) for i in range(0, len(ids), step)]
        )
        flat = np.concatenate(parts).astype(np.float64)
        emb = np.zeros((len(entries), flat.shape[1]), np.float64)
        np.add.at(emb, np.asarray(owner), flat)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        return emb.astype(np.float32)

    async def scorer(self, spec: LabelSpec, ctx: RequestContext) -> Scorer:
        """What scores masks for ``spec``: text embeddings, and for a stored vocabulary its example
        cache (prepared once per vocabulary revision); MULTI adds the neutral prompt and the
        thresholds (the vocabulary's set and fitted ones, fitted once per revision; the request's
        default and overrides on top)."""
        vocab = spec.vocabulary
        if vocab is None:
            base = Scorer(spec.labels, await self.text_embeddings(spec.entries, ctx), self.logit_scale)
        else:
            base = await self._prepared(vocab, ctx)
        if spec.mode != "multi":
            return base
        multi = replace(base, mode="multi", neutral=(await self.text_embeddings(((NEUTRAL, ()),), ctx))[0])
        fitted, _ = self._fitted(multi, vocab)
        default = spec.min_confidence if spec.min_confidence > 0 else DEFAULT_MULTI_THRESHOLD
        multi.thresholds = np.where(np.isnan(fitted), default, fitted).astype(np.float32)
        for name, t in spec.thresholds.items():
            multi.thresholds[spec.labels.index(name)] = t
        return multi

    async def relabel(self, embeddings: np.ndarray, chunks: list[int], spec: LabelSpec, ctx: RequestContext):
        """Labels of kept crop embeddings under ``spec``, scored in the chunks the answer was
        labelled in (``chunks``: their sizes; the same arithmetic as a Segment: equal results)."""
        scorer = await self.scorer(spec, ctx)

        def score() -> list[LabelResult]:
            out: list[LabelResult] = []
            i = 0
            for n in chunks:
                out += scorer.classify(embeddings[i : i + n], i, spec.top_k, spec.min_confidence)
                i += n
            return out

        return await asyncio.to_thread(score) if len(embeddings) > 256 else score()

    @staticmethod
    def _key(vocab) -> tuple:
        return (vocab.name, vocab.revision, vocab.clip_model, vocab.updated)

    def _remember(self, cache: OrderedDict, key: tuple, value):
        cache[key] = value
        while len(cache) > self.cfg.text_cache_size:
            cache.popitem(last=False)
        return value

    async def _prepared(self, vocab, ctx: RequestContext) -> Scorer:
        """A stored vocabulary's text embeddings and example cache, once per revision."""
        key = self._key(vocab)
        hit = self._vocab_cache.get(key)
        if hit is not None:
            self._vocab_cache.move_to_end(key)
            return hit
        text = await self.text_embeddings(vocab.entries(), ctx)
        keys, values = vocab.cache() or (None, None)
        labels = tuple(lab.name for lab in vocab.labels)
        prepared = Scorer(labels, text, self.logit_scale, keys=keys, values=values, alpha=vocab.alpha,
                          beta=vocab.beta)  # fmt: skip
        return self._remember(self._vocab_cache, key, prepared)

    def _fitted(self, multi: Scorer, vocab) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """MULTI thresholds a vocabulary sets or fits (NaN: the request's default) and where each
        comes from; the leave-one-out fit is O(examples^2), so once per revision."""
        if vocab is None:
            return np.full(len(multi.labels), np.nan, np.float32), []
        key = self._key(vocab)
        hit = self._fits.get(key)
        if hit is None:
            hit = self._remember(
                self._fits, key, scoring.thresholds(multi, [lab.threshold for lab in vocab.labels], np.nan)
            )
        return hit

    async def threshold_report(
        self, vocab, default: float, ctx: RequestContext
    ) -> list[tuple[float, str, str]]:
        """(threshold, source, note) per label of ``vocab`` in MULTI mode (GetVocabulary)."""
        spec = LabelSpec(vocab.entries(), "multi", min_confidence=default, vocabulary=vocab)
        multi = await self.scorer(spec, ctx)
        _, how = self._fitted(multi, vocab)
        return [(float(t), src, note) for t, (src, note) in zip(multi.thresholds, how)]
