"""Label scoring as pure functions (zero-shot, Tip-Adapter's cache, SINGLE / MULTI, fitted
thresholds), the vocabulary record and its stores' atomic updates."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from seglabel_server.errors import AlreadyExists, LimitExceeded, NotFound
from seglabel_server.pipeline import scoring
from seglabel_server.pipeline.scoring import Scorer, cache_logits, fit_threshold, leave_one_out_scores
from seglabel_server.storage.vocabularies import DiskVocabularies, MemoryVocabularies
from seglabel_server.vocabulary import StoredExample, VocabLabel, Vocabulary


def unit(rng, *shape) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_without_examples_the_scores_are_clips_zero_shot_softmax_exactly():
    rng = np.random.default_rng(0)
    emb, text = unit(rng, 7, 16), unit(rng, 4, 16)
    got = Scorer(("a", "b", "c", "d"), text, 100.0).scores(emb)
    logits = 100.0 * emb @ text.T
    logits -= logits.max(axis=1, keepdims=True)
    want = np.exp(logits)
    want /= want.sum(axis=1, keepdims=True)
    assert np.array_equal(got, want)


def test_the_cache_term_is_tip_adapters():
    rng = np.random.default_rng(1)
    emb, keys = unit(rng, 5, 8), unit(rng, 6, 8)
    values = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 6)]
    beta, alpha = 5.5, 1.17
    # the official code: ((-1) * (beta - beta * affinity)).exp() @ cache_values * alpha
    want = np.exp(-1 * (beta - beta * (emb @ keys.T))) @ values * alpha
    np.testing.assert_allclose(cache_logits(emb, keys, values, alpha, beta), want, rtol=1e-4, atol=1e-5)
    # alpha is in the units of logit scale 100: a model with another scale gets it scaled
    s = Scorer(("a", "b", "c"), unit(rng, 3, 8), 50.0, keys=keys, values=values, alpha=alpha, beta=beta)
    np.testing.assert_allclose(
        s.logits(emb) - 50.0 * emb @ s.text.T, cache_logits(emb, keys, values, alpha / 2, beta), atol=1e-5
    )


def test_examples_decide_a_label_whose_text_means_nothing_and_negatives_suppress():
    rng = np.random.default_rng(2)
    text = unit(rng, 2, 32)
    obj = unit(rng, 32)
    near = obj + 0.05 * unit(rng, 32)
    near /= np.linalg.norm(near)
    # zero-shot prefers label 0 for this object by a wide margin
    text[0] = 0.6 * obj + 0.8 * text[0]
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    keys, values = obj[None], np.array([[0.0, 1.0]], np.float32)
    zero = Scorer(("shown", "part-7731"), text, 100.0)
    taught = Scorer(("shown", "part-7731"), text, 100.0, keys=keys, values=values, alpha=100.0, beta=7.0)
    assert zero.classify(near[None], 0, 2, 0.0)[0].label == "shown"
    assert taught.classify(near[None], 0, 2, 0.0)[0].label == "part-7731"
    far = unit(rng, 32)
    gain = taught.logits(far[None]) - zero.logits(far[None])
    assert (
        gain[0, 1] < 0.2 * (taught.logits(near[None]) - zero.logits(near[None]))[0, 1]
    )  # exp(-beta (1 - cos))
    negative = Scorer(("shown", "part-7731"), text, 100.0, keys=keys, values=-values, alpha=10.0, beta=7.0)
    assert negative.scores(near[None])[0, 1] < zero.scores(near[None])[0, 1]


def test_multi_scores_each_label_against_the_neutral_prompt():
    rng = np.random.default_rng(3)
    emb, text, neutral = unit(rng, 3, 8), unit(rng, 4, 8), unit(rng, 8)
    s = Scorer(tuple("abcd"), text, 20.0, "multi", neutral=neutral, thresholds=np.full(4, 0.5, np.float32))
    want = 1 / (1 + np.exp(-(20.0 * emb @ text.T - (20.0 * emb @ neutral)[:, None])))
    np.testing.assert_allclose(s.scores(emb), want, rtol=1e-5)
    out = s.classify(emb, 10, 2, 0.0)
    for row, lab in enumerate(out):
        assert lab.mask_index == 10 + row
        assert {n for n, _, _ in lab.labels} == {"abcd"[j] for j in np.nonzero(want[row] >= 0.5)[0]}
        assert [c for _, c, _ in lab.labels] == sorted((c for _, c, _ in lab.labels), reverse=True)
        assert lab.label == (lab.labels[0][0] if lab.labels else "unknown")


def test_thresholds_fit_between_positives_and_negatives():
    t, note = fit_threshold(np.array([0.7, 0.9, 0.8]), np.array([0.2, 0.4]))
    assert t == pytest.approx(0.55) and "separate" in note and "3 positives and 2 negatives" in note
    t, note = fit_threshold(np.array([0.3, 0.8, 0.9]), np.array([0.2, 0.5, 0.6]))
    assert "overlap" in note and 0.6 < t < 0.8  # best balanced accuracy: 5 of 6 right


def test_leave_one_out_leaves_each_example_out_of_its_own_score():
    rng = np.random.default_rng(4)
    keys = unit(rng, 4, 8)
    values = np.array([[1, 0], [1, 0], [-1, 0], [-1, 0]], np.float32)
    s = Scorer(("a", "b"), unit(rng, 2, 8), 10.0, "multi", keys, values, 10.0, 7.0, unit(rng, 8))
    loo = leave_one_out_scores(s, 0, np.arange(4))
    for i in range(4):
        rest = np.delete(np.arange(4), i)
        alone = Scorer(("a", "b"), s.text, 10.0, "multi", keys[rest], values[rest], 10.0, 7.0, s.neutral)
        assert loo[i] == pytest.approx(alone.scores(keys[i : i + 1])[0, 0], rel=1e-5)
    th, how = scoring.thresholds(s, [0.0, 0.3], 0.5)
    assert (
        how[0][0] == "fitted" and how[1] == ("set", "set in the vocabulary") and th[1] == pytest.approx(0.3)
    )


def vocab(n: int = 2) -> Vocabulary:
    rng = np.random.default_rng(5)
    ex = [
        StoredExample.new(i % 2 == 0, unit(rng, 16), {"file_id": "f" * 64, "box": [0, 0, 4, 4]})
        for i in range(n)
    ]
    return Vocabulary("v", [VocabLabel("cat", ("a {}",), 0.0, ex), VocabLabel("dog")], "m@1")


def test_a_vocabulary_record_round_trips_exactly():
    v = vocab(3)
    back = Vocabulary.from_json(v.to_json())
    assert back.to_json() == v.to_json()
    assert np.array_equal(back.labels[0].examples[1].embedding, v.labels[0].examples[1].embedding)
    keys, values = back.cache()
    assert keys.shape == (3, 16) and values.tolist() == [[1, 0], [-1, 0], [1, 0]]
    assert Vocabulary("e", [VocabLabel("x")], "m").cache() is None


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_store_updates_are_atomic_and_a_failed_update_writes_nothing(kind, tmp_path):
    store = MemoryVocabularies() if kind == "memory" else DiskVocabularies(tmp_path)
    record = vocab(0).to_json()
    store.create("v", record)
    with pytest.raises(AlreadyExists):
        store.create("v", b"{}")
    with pytest.raises(NotFound):
        store.update("nope", lambda cur: cur)
    version = store.version("v")

    def fail(cur: bytes) -> bytes:
        raise LimitExceeded("too big")

    with pytest.raises(LimitExceeded):
        store.update("v", fail)
    assert store.version("v") == version and store.get("v")[1] == record

    def add_one(cur: bytes) -> bytes:
        v = Vocabulary.from_json(cur)
        v.revision += 1
        return v.to_json()

    threads = [
        threading.Thread(target=lambda: [store.update("v", add_one) for _ in range(10)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Vocabulary.from_json(store.get("v")[1]).revision == 41
    assert store.names() == ["v"] and store.delete("v") and not store.delete("v") and store.get("v") is None


def test_a_vocabulary_created_again_has_a_new_version_on_redis(redis_url):
    from seglabel_server.storage.vocabularies import RedisVocabularies

    store = RedisVocabularies(redis_url, prefix="seglabel:test-vocab:")
    store.create("again", b"one", replace=True)
    first = store.version("again")
    store.delete("again")
    store.create("again", b"two")
    assert store.version("again") != first and store.get("again")[1] == b"two"
    store.delete("again")
