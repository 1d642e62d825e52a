"""Label scores from CLIP embeddings, as small pure functions: zero-shot text logits, the examples'
Tip-Adapter cache added to them, one softmax (SINGLE) or one sigmoid per label (MULTI), and MULTI
thresholds fitted from a label's own examples."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from seglabel_server.models.vocab import UNKNOWN_LABEL
from seglabel_server.types import LabelResult

DEFAULT_MULTI_THRESHOLD = 0.5  # sigmoid(0): the label is as likely as the neutral "object" prompt
MIN_FIT = 2  # positives and negatives a label needs for its threshold to be fitted
NEUTRAL = "object"  # MULTI's reference prompt (with the server's templates)


def cache_logits(
    emb: np.ndarray, keys: np.ndarray, values: np.ndarray, alpha: float, beta: float
) -> np.ndarray:
    """Tip-Adapter's cache term [K, V]: ``alpha * exp(-beta * (1 - emb . keys)) @ values``."""
    return alpha * (np.exp(-beta * (1.0 - emb @ keys.T)) @ values)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))  # 1 / (1 + e^-x), no overflow, exact in both tails


@dataclass
class Scorer:
    """Everything a vocabulary's scores need, prepared once (``Labeller.scorer``):
    ``text`` [V, D] label embeddings, ``keys`` / ``values`` the example cache (None without
    examples), ``neutral`` [D] MULTI's reference embedding, ``thresholds`` [V] MULTI's."""

    labels: tuple[str, ...]
    text: np.ndarray
    logit_scale: float
    mode: str = "single"
    keys: np.ndarray | None = None
    values: np.ndarray | None = None
    alpha: float = 0.0  # in the units of logit scale 100 (the paper's); scaled to logit_scale here
    beta: float = 0.0
    neutral: np.ndarray | None = None
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def logits(self, emb: np.ndarray) -> np.ndarray:
        """[K, V]: zero-shot text logits, plus the cache term when there are examples (with none,
        exactly the zero-shot logits: no term is added)."""
        logits = self.logit_scale * emb @ self.text.T
        if self.keys is not None:
            logits = logits + cache_logits(
                emb, self.keys, self.values, self.alpha * self.logit_scale / 100.0, self.beta
            )
        return logits

    def scores(self, emb: np.ndarray) -> np.ndarray:
        """[K, V] in [0, 1]: SINGLE a softmax over the labels; MULTI one sigmoid per label of its
        logit minus the neutral prompt's."""
        logits = self.logits(emb)
        if self.mode == "multi":
            ref = self.logit_scale * emb @ self.neutral
            return sigmoid(logits - ref[:, None])
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs

    def classify(
        self, emb: np.ndarray, first_index: int, top_k: int, min_confidence: float
    ) -> list[LabelResult]:
        """One LabelResult per row of ``emb`` (masks ``first_index``...). SINGLE: the best label, or
        "unknown" under ``min_confidence``. MULTI: every label at or above its threshold, best
        first; "unknown" when none is."""
        probs = self.scores(emb)
        names, out = self.labels, []
        order = np.argsort(-probs, axis=1, kind="stable")
        if self.mode == "multi":
            th = self.thresholds
            ranked = np.take_along_axis(probs, order, axis=1)
            passed = ranked >= th[order]
            for row in range(len(probs)):
                o, r = order[row], ranked[row]
                above = [(names[j], float(v), float(th[j])) for j, v, ok in zip(o, r, passed[row]) if ok]
                out.append(
                    LabelResult(
                        mask_index=first_index + row,
                        label=above[0][0] if above else UNKNOWN_LABEL,
                        confidence=above[0][1] if above else float(r[0]),
                        top_k=[(names[j], float(v), float(th[j])) for j, v in zip(o[:top_k], r[:top_k])],
                        labels=above,
                    )
                )
            return out
        for row, pr in enumerate(probs):
            top = order[row, :top_k]
            best = float(pr[top[0]])
            out.append(
                LabelResult(
                    mask_index=first_index + row,
                    label=names[top[0]] if best >= min_confidence else UNKNOWN_LABEL,
                    confidence=best,
                    top_k=[(names[j], float(pr[j])) for j in top],
                )
            )
        return out


def leave_one_out_scores(scorer: Scorer, label: int, rows: np.ndarray) -> np.ndarray:
    """MULTI scores of label ``label`` for the cache's own examples ``rows``, each scored with the
    cache less itself (an example always matches itself: its own score says nothing)."""
    emb = scorer.keys[rows]
    aff = np.exp(-scorer.beta * (1.0 - emb @ scorer.keys.T))
    aff[np.arange(len(rows)), rows] = 0.0
    cache = scorer.alpha * scorer.logit_scale / 100.0 * (aff @ scorer.values[:, label])
    logit = scorer.logit_scale * emb @ scorer.text[label] + cache
    return sigmoid(logit - scorer.logit_scale * emb @ scorer.neutral)


def fit_threshold(pos: np.ndarray, neg: np.ndarray) -> tuple[float, str]:
    """The threshold that best separates a label's positive from its negative scores: midway
    between the highest negative and the lowest positive when they separate, else the one with
    the best balanced accuracy (midpoints between neighbouring scores). (threshold, note)."""
    pos, neg = np.sort(np.asarray(pos, np.float64)), np.sort(np.asarray(neg, np.float64))
    what = f"fitted from {len(pos)} positives and {len(neg)} negatives (leave-one-out)"
    if neg[-1] < pos[0]:
        return float((neg[-1] + pos[0]) / 2), f"{what}: they separate"
    values = np.unique(np.concatenate([pos, neg]))
    cands = (values[:-1] + values[1:]) / 2 if len(values) > 1 else values
    best, best_acc = float(cands[0]), -1.0
    for t in cands:
        acc = 0.5 * ((pos >= t).mean() + (neg < t).mean())
        if acc > best_acc + 1e-12:
            best, best_acc = float(t), float(acc)
    return best, f"{what}: they overlap, balanced accuracy {best_acc:.2f}"


def thresholds(
    scorer: Scorer, label_thresholds: list[float], default: float
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """MULTI thresholds per label and where each comes from: ("set", ...) when the vocabulary sets
    it, ("fitted", note) from the label's examples when it has ``MIN_FIT`` positives and
    negatives, else ("default", ...)."""
    out = np.full(len(scorer.labels), default, np.float32)
    how: list[tuple[str, str]] = []
    for v, set_to in enumerate(label_thresholds):
        if set_to > 0:
            out[v] = set_to
            how.append(("set", "set in the vocabulary"))
            continue
        col = scorer.values[:, v] if scorer.values is not None else np.zeros(0)
        pos, neg = np.nonzero(col > 0)[0], np.nonzero(col < 0)[0]
        if len(pos) >= MIN_FIT and len(neg) >= MIN_FIT:
            t, note = fit_threshold(
                leave_one_out_scores(scorer, v, pos), leave_one_out_scores(scorer, v, neg)
            )
            out[v] = t
            how.append(("fitted", note))
        else:
            how.append(
                ("default", f"{len(pos)} positives and {len(neg)} negatives: fitting needs {MIN_FIT} of each")
            )
    return out, how
