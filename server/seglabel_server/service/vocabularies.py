"""Named vocabularies and their examples: checked, embedded and stored, and resolved into the
:class:`LabelSpec` a Segment or a Relabel is scored with. Raises the domain's typed errors."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np

from seglabel_server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    clip_text,
)
from seglabel_server.pipeline.scoring import DEFAULT_MULTI_THRESHOLD
from seglabel_server.scheduler.batching import DEFAULT
from seglabel_server.service.admission import Admission
from seglabel_server.service.config import ServerConfig
from seglabel_server.service.examples import embed_examples
from seglabel_server.service.image_source import ImageSource
from seglabel_server.service.lifecycle import Lifecycle
from seglabel_server.service.params import label_spec
from seglabel_server.storage.vocabularies import VocabularyStore, unknown
from seglabel_server.types import ExampleIn, LabelSpec, RequestContext, SegmentOptions
from seglabel_server.vocabulary import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    StoredExample,
    VocabLabel,
    Vocabulary,
    check_label,
    check_name,
    check_prompts,
)


@dataclasses.dataclass
class LabelIn:
    name: str
    prompts: tuple[str, ...] = ()
    threshold: float = 0.0


class Vocabularies:
    """The vocabulary calls of the service, over the vocabulary ``store``: the loaded models (CLIP,
    the answer cache) and readiness from ``lifecycle``, the memory budget from ``admission``, the
    examples' images from ``images``."""

    def __init__(self, store: VocabularyStore, cfg: ServerConfig, lifecycle: Lifecycle, admission: Admission,
                 images: ImageSource):  # fmt: skip
        self.store, self.cfg = store, cfg
        self.lifecycle, self.admission, self.images = lifecycle, admission, images
        self.parsed: dict[str, tuple[object, Vocabulary]] = {}  # name -> (store version, record)

    # -- pieces ---------------------------------------------------------------------------------
    @property
    def clip_model(self) -> str:
        loaded = self.lifecycle.loaded
        return loaded.pipeline.parts.clip_model if loaded is not None else ""

    def _max_chars(self) -> int:
        return self.cfg.pipeline.max_label_chars

    def _require_clip(self) -> None:
        self.lifecycle.require_ready()
        self.lifecycle.require("labels", "vocabularies (CLIP labels)")

    async def _run(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    async def load(self, name: str, ctx: RequestContext | None = None) -> Vocabulary:
        """The stored vocabulary ``name`` (NotFound), parsed once per store version, built with this
        server's CLIP model: one of another model is re-embedded from its examples' sources first
        (FailedPrecondition when one is gone)."""
        check_name(name)
        version = await self._run(self.store.version, name)
        if version is None:
            self.parsed.pop(name, None)
            raise unknown(name)
        hit = self.parsed.get(name)
        if hit is None or hit[0] != version:
            got = await self._run(self.store.get, name)
            if got is None:
                raise unknown(name)
            hit = (got[0], Vocabulary.from_json(got[1]))
            self.parsed[name] = hit
        vocab = hit[1]
        if vocab.clip_model != self.clip_model and self.clip_model:
            vocab = await self._rebuild(vocab, ctx or RequestContext())
        return vocab

    async def _rebuild(self, vocab: Vocabulary, ctx: RequestContext) -> Vocabulary:
        """Every example embedded again with this server's CLIP model, from the upload its source
        names; written back (the stored record then says this model)."""
        examples = [(lab.name, e) for lab in vocab.labels for e in lab.examples]
        sources = [ExampleIn.from_source(e.source, not e.positive) for _, e in examples]
        missing = [i for i, s in enumerate(sources) if not s.file_id]
        why = (
            f"vocabulary {vocab.name!r} was built with CLIP model {vocab.clip_model}, this server runs "
            f"{self.clip_model}"
        )
        if missing:
            raise FailedPrecondition(
                f"{why}; {len(missing)} of its examples have no stored source to embed again: create it "
                "again on this server (or serve it with the model it was built with)"
            )
        try:
            embedded = await self._embed(sources, ctx) if sources else []
        except (InvalidArgument, NotFound) as exc:
            raise FailedPrecondition(f"{why}; its examples cannot be embedded again ({exc})") from None
        new = {e.id: emb for (_, e), (emb, _) in zip(examples, embedded)}
        old_model, model = vocab.clip_model, self.clip_model

        def rebuild(current: bytes | None) -> bytes:
            v = Vocabulary.from_json(current)
            if v.clip_model != old_model:
                return current  # rebuilt meanwhile (another request or replica)
            for lab in v.labels:
                lab.examples = [
                    dataclasses.replace(e, embedding=new[e.id]) for e in lab.examples if e.id in new
                ]
            v.clip_model, v.revision, v.updated = model, v.revision + 1, time.time()
            return v.to_json()

        record = await self._run(self.store.update, vocab.name, rebuild)
        return Vocabulary.from_json(record)

    async def _embed(self, examples: list[ExampleIn], ctx: RequestContext) -> list[tuple[np.ndarray, dict]]:
        return await embed_examples(examples, ctx, self.lifecycle, self.images, self.clip_model)

    # -- calls ----------------------------------------------------------------------------------
    async def describe(self, vocab: Vocabulary, ctx: RequestContext | None = None):
        """(vocabulary, its MULTI thresholds per label: (value, source, note))."""
        return vocab, await self.thresholds(vocab, ctx or RequestContext())

    async def get(self, name: str, ctx: RequestContext):
        self.lifecycle.require_ready()
        return await self.describe(await self.load(name, ctx), ctx)

    async def create(self, name: str, labels: list[LabelIn], replace: bool, alpha: float, beta: float):
        """(vocabulary, thresholds) as :meth:`describe`."""
        self._require_clip()
        check_name(name)
        checked, seen = [], set()
        for lab in labels:
            n = check_label(lab.name, self._max_chars())
            if n in seen:
                raise InvalidArgument(f"label {clip_text(n)} is given twice")
            seen.add(n)
            if not (0.0 <= lab.threshold <= 1.0):
                raise InvalidArgument(f"label {clip_text(n)}: threshold must be within [0, 1]")
            checked.append(VocabLabel(n, check_prompts(n, lab.prompts, self._max_chars()), lab.threshold))
        if len(checked) > self.cfg.pipeline.max_vocabulary:
            raise LimitExceeded(f"{len(checked)} labels is over the limit {self.cfg.pipeline.max_vocabulary}")
        for what, v in (("alpha", alpha), ("beta", beta)):
            if not (0.0 <= v <= 1000.0):  # also NaN
                raise InvalidArgument(f"{what} must be within [0, 1000] (0: the default), got {v}")
        vocab = Vocabulary(name, checked, self.clip_model, alpha or DEFAULT_ALPHA, beta or DEFAULT_BETA)
        record = vocab.to_json()
        vocab.stored_bytes = len(record)
        self._check_bytes(name, record)
        names = await self._run(self.store.names)
        if name not in names and len(names) >= self.cfg.max_vocabularies:
            raise LimitExceeded(f"{len(names)} vocabularies stored: the limit is {self.cfg.max_vocabularies}")
        await self._run(self.store.create, name, record, replace)
        self.parsed.pop(name, None)
        return await self.describe(vocab)

    async def ensure_labels(self, name: str, labels: list[str]):
        """(vocabulary, thresholds) of ``name`` holding at least ``labels``: created with them when
        absent, the missing ones appended (examples kept) when present. A tool's project (Label
        Studio's labeling config) keeps its vocabulary in step this way."""
        self._require_clip()
        check_name(name)
        wanted = list(dict.fromkeys(check_label(lab, self._max_chars()) for lab in labels))
        try:
            vocab = await self.load(name)
        except NotFound:
            try:
                return await self.create(name, [LabelIn(lab) for lab in wanted], False, 0.0, 0.0)
            except AlreadyExists:
                vocab = await self.load(name)  # created meanwhile
        if all(vocab.label(lab) is not None for lab in wanted):
            return await self.describe(vocab)  # every /predict of a project: no write
        cfg = self.cfg

        def append(current: bytes | None) -> bytes:
            v = Vocabulary.from_json(current)
            missing = [lab for lab in wanted if v.label(lab) is None]
            if not missing:
                return current
            if len(v.labels) + len(missing) > cfg.pipeline.max_vocabulary:
                raise LimitExceeded(
                    f"vocabulary {name!r} would hold over {cfg.pipeline.max_vocabulary} labels"
                )
            v.labels += [VocabLabel(lab, check_prompts(lab, (), self._max_chars())) for lab in missing]
            v.revision, v.updated = v.revision + 1, time.time()
            return v.to_json()

        await self._run(self.store.update, name, append)
        return await self.describe(await self.load(name))

    def _check_bytes(self, name: str, record: bytes) -> None:
        limit = self.cfg.max_vocabulary_mb << 20
        if len(record) > limit:
            raise LimitExceeded(f"vocabulary {name!r} would take {len(record)} bytes: the limit is {limit}")

    async def delete(self, name: str) -> bool:
        check_name(name)
        self.parsed.pop(name, None)
        if not await self._run(self.store.delete, name):
            raise unknown(name)
        return True

    async def names(self) -> list[Vocabulary]:
        out = []
        for name in await self._run(self.store.names):
            got = await self._run(self.store.get, name)
            if got is not None:
                out.append(Vocabulary.from_json(got[1]))
        return out

    async def add_examples(self, name: str, label: str, examples: list[ExampleIn], ctx: RequestContext):
        """((vocabulary after, thresholds), new example ids). Nothing is written unless every example
        is good."""
        self._require_clip()
        label = check_label(label, self._max_chars())
        if not examples:
            raise InvalidArgument("AddExamples needs at least one example")
        if len(examples) > self.cfg.max_examples_per_label:
            raise LimitExceeded(
                f"{len(examples)} examples is over the limit {self.cfg.max_examples_per_label}"
            )
        await self.load(name, ctx)  # NotFound first, and a vocabulary of another model rebuilt
        self.lifecycle.require_ready()
        async with self.admission.admit(DEFAULT, ctx=ctx) as ticket:
            ticket.charge(self._example_bytes(examples))
            embedded = await self._embed(examples, ctx)
        new = [StoredExample.new(not ex.negative, emb, src) for ex, (emb, src) in zip(examples, embedded)]
        model, cfg = self.clip_model, self.cfg

        def add(current: bytes | None) -> bytes:
            v = Vocabulary.from_json(current)
            if v.clip_model != model:
                raise FailedPrecondition(f"vocabulary {name!r} changed CLIP model meanwhile; retry")
            lab = v.label(label)
            if lab is None:
                if len(v.labels) >= cfg.pipeline.max_vocabulary:
                    raise LimitExceeded(f"vocabulary {name!r} has {len(v.labels)} labels: the limit")
                lab = VocabLabel(label)
                v.labels.append(lab)
            if len(lab.examples) + len(new) > cfg.max_examples_per_label:
                raise LimitExceeded(
                    f"label {label!r} would hold {len(lab.examples) + len(new)} examples: the limit is "
                    f"{cfg.max_examples_per_label}"
                )
            lab.examples += new
            v.revision, v.updated = v.revision + 1, time.time()
            record = v.to_json()
            self._check_bytes(name, record)
            return record

        record = await self._run(self.store.update, name, add)
        return await self.describe(Vocabulary.from_json(record), ctx), [e.id for e in new]

    def _example_bytes(self, examples: list[ExampleIn]) -> int:
        """Budget charge of embedding examples: the largest image decoded, its region masks, crops."""
        pixels = self.cfg.max_image_pixels if any(e.file_id for e in examples) else 0
        return min(pixels, 16_000_000) * 5 + len(examples) * 3 * 224 * 224 * 4

    async def remove_examples(self, name: str, label: str, ids: list[str], remove_label: bool):
        """(vocabulary after, thresholds)."""
        self.lifecycle.require_ready()
        check_name(name)

        def remove(current: bytes | None) -> bytes:
            v = Vocabulary.from_json(current)
            lab = v.label(label)
            if lab is None:
                raise NotFound(f"vocabulary {name!r} has no label {clip_text(label)}")
            if ids:
                unknown_ids = set(ids) - {e.id for e in lab.examples}
                if unknown_ids:
                    raise NotFound(f"label {label!r} has no example {sorted(unknown_ids)[0]!r}")
                lab.examples = [e for e in lab.examples if e.id not in set(ids)]
            else:
                lab.examples = []
            if remove_label:
                v.labels.remove(lab)
            v.revision, v.updated = v.revision + 1, time.time()
            return v.to_json()

        record = await self._run(self.store.update, name, remove)
        return await self.describe(Vocabulary.from_json(record))

    async def thresholds(self, vocab: Vocabulary, ctx: RequestContext) -> list[tuple[float, str, str]]:
        labeller = self.lifecycle.loaded.pipeline.labels
        if labeller is None or vocab.clip_model != self.clip_model:
            return [(DEFAULT_MULTI_THRESHOLD, "default", "CLIP unavailable") for _ in vocab.labels]
        return await labeller.threshold_report(vocab, DEFAULT_MULTI_THRESHOLD, ctx)

    # -- a request's labels ---------------------------------------------------------------------
    async def spec(self, p: SegmentOptions, ctx: RequestContext) -> LabelSpec:
        """The LabelSpec of resolved params ``p`` (a list, or a stored vocabulary, loaded here)."""
        if not p.vocabulary_name:
            return label_spec(p)
        vocab = await self.load(p.vocabulary_name, ctx)
        if not vocab.labels:
            raise FailedPrecondition(f"vocabulary {vocab.name!r} has no labels yet: add examples or labels")
        return label_spec(p, vocab)
