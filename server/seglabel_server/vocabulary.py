"""A named vocabulary as the server keeps it: labels, their prompts, their examples' crop
embeddings (never the images), Tip-Adapter's parameters, and the CLIP model it was built with.
Transport-neutral; stored as JSON (``storage/vocabularies.py``), mapped to protobuf in
``transport/grpc/convert.py``."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from seglabel_server.errors import InvalidArgument, clip_text

# Tip-Adapter (Zhang et al., ECCV 2022, arXiv 2207.09519): logits = 100 * cos(text) + alpha * A L,
# A = exp(-beta * (1 - cos(example))). The official code initialises beta 1, alpha 1.17 on
# ImageNet (configs/imagenet.yaml) and searches beta in (0, 7], alpha in (0, 3] on a validation
# split with 16 examples per class. A vocabulary here is taught by a few corrections of the same
# objects, with no validation split to search on, so the defaults favour the examples more
# strongly and more sharply: beta 7 (the top of the paper's search range: an example 0.9 cosine
# away weighs exp(-0.7) = 0.50, one 0.7 away 0.12) and alpha 10 (one near-identical example
# outweighs a zero-shot margin of up to 10 logits, 0.1 of cosine). ``seglabel eval-labels``
# measures other values on a user's own data; both are per vocabulary.
DEFAULT_ALPHA = 10.0
DEFAULT_BETA = 7.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PROMPTS_PER_LABEL = 16


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"vocabulary name must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or "
            f"digit), got {clip_text(str(name))}"
        )
    return name


def check_label(label: str, max_chars: int) -> str:
    """A label as stored and answered: stripped, 1..max_chars characters, no control characters."""
    text = (label or "").strip()
    if not text:
        raise InvalidArgument("a label must not be empty")
    if len(text) > max_chars:
        raise InvalidArgument(f"label {clip_text(text)} is over {max_chars} characters")
    if _CONTROL.search(text):
        raise InvalidArgument(f"label {clip_text(text)} has control characters")
    return text


def check_prompts(label: str, prompts, max_chars: int) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(p.strip() for p in prompts))
    if len(out) > MAX_PROMPTS_PER_LABEL:
        raise InvalidArgument(f"label {clip_text(label)}: at most {MAX_PROMPTS_PER_LABEL} prompts")
    for p in out:
        if not p or len(p) > 4 * max_chars or _CONTROL.search(p):
            raise InvalidArgument(
                f"label {clip_text(label)}: prompt {clip_text(p)} must be 1-{4 * max_chars} characters, "
                "no control characters"
            )
    return out


def prompt_texts(name: str, prompts: tuple[str, ...], templates: tuple[str, ...]) -> list[str]:
    """The texts embedded for a label: its prompts (or ``templates``), "{}" filled with its name."""
    return [p.replace("{}", name) for p in (prompts or templates)]


@dataclass
class StoredExample:
    id: str
    positive: bool
    embedding: np.ndarray  # float32 [D], L2-normalised: the crop's CLIP image embedding
    source: dict  # {"file_id", "box": [x0, y0, x1, y1]} | {"file_id", "mask": rle} | {"file_id"} | {}

    @staticmethod
    def new(positive: bool, embedding: np.ndarray, source: dict) -> StoredExample:
        return StoredExample(uuid.uuid4().hex[:16], positive, np.asarray(embedding, np.float32), source)


@dataclass
class VocabLabel:
    name: str
    prompts: tuple[str, ...] = ()
    threshold: float = 0.0  # > 0: set by the user (MULTI), never fitted
    examples: list[StoredExample] = field(default_factory=list)

    @property
    def positives(self) -> int:
        return sum(e.positive for e in self.examples)

    @property
    def negatives(self) -> int:
        return len(self.examples) - self.positives


@dataclass
class Vocabulary:
    name: str
    labels: list[VocabLabel]
    clip_model: str
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    revision: int = 1
    updated: float = field(default_factory=time.time)
    stored_bytes: int = 0  # the record's size as read or written (not part of it)

    def label(self, name: str) -> VocabLabel | None:
        return next((lab for lab in self.labels if lab.name == name), None)

    @property
    def examples(self) -> int:
        return sum(len(lab.examples) for lab in self.labels)

    def entries(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(label, prompts) per label: what its text embeddings are computed from."""
        return tuple((lab.name, lab.prompts) for lab in self.labels)

    def cache(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Tip-Adapter's cache: keys [N, D] (example embeddings) and values [N, V] (+1 for a
        positive of label v, -1 for a negative); None without examples."""
        rows = [(e, v) for v, lab in enumerate(self.labels) for e in lab.examples]
        if not rows:
            return None
        keys = np.stack([e.embedding for e, _ in rows]).astype(np.float32)
        values = np.zeros((len(rows), len(self.labels)), np.float32)
        for i, (e, v) in enumerate(rows):
            values[i, v] = 1.0 if e.positive else -1.0
        return keys, values

    # -- JSON, as stored ------------------------------------------------------------------------
    def to_json(self) -> bytes:
        return json.dumps(
            {
                "name": self.name,
                "clip_model": self.clip_model,
                "alpha": self.alpha,
                "beta": self.beta,
                "revision": self.revision,
                "updated": self.updated,
                "labels": [
                    {
                        "name": lab.name,
                        "prompts": list(lab.prompts),
                        "threshold": lab.threshold,
                        "examples": [
                            {
                                "id": e.id,
                                "positive": e.positive,
                                "source": e.source,
                                "embedding": base64.b64encode(
                                    np.ascontiguousarray(e.embedding, "<f4").tobytes()
                                ).decode("ascii"),
                            }
                            for e in lab.examples
                        ],
                    }
                    for lab in self.labels
                ],
            },
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def from_json(data: bytes | str) -> Vocabulary:
        d = json.loads(data)
        return Vocabulary(
            stored_bytes=len(data),
            name=d["name"],
            clip_model=d["clip_model"],
            alpha=float(d["alpha"]),
            beta=float(d["beta"]),
            revision=int(d["revision"]),
            updated=float(d.get("updated", 0.0)),
            labels=[
                VocabLabel(
                    name=lab["name"],
                    prompts=tuple(lab.get("prompts", ())),
                    threshold=float(lab.get("threshold", 0.0)),
                    examples=[
                        StoredExample(
                            e["id"],
                            bool(e["positive"]),
                            np.frombuffer(base64.b64decode(e["embedding"]), "<f4").astype(np.float32),
                            e.get("source") or {},
                        )
                        for e in lab.get("examples", ())
                    ],
                )
                for lab in d["labels"]
            ],
        )
