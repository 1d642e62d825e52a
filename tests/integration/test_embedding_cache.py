"""The image-embedding cache: a click on an image seen before skips the encoder and gives the masks
a server without the cache gives; bounded by bytes, counted in metrics, listed in the limits."""

from __future__ import annotations

import numpy as np
import pytest
from seglabel_client.client import AsyncSegmenterClient
from seglabel_server.models.kinds.sam2 import ImageFeatures
from seglabel_server.storage.embedding_cache import EmbeddingCache


def _masks(resp):
    return [(m.rle.counts, m.area, round(m.predicted_iou, 5)) for m in resp.masks]


async def test_clicks_on_a_seen_image_skip_the_encoder_and_match_an_uncached_server(make_server, photo_bytes):
    cached, plain = await make_server(), await make_server(embedding_cache_mb=0)
    click = dict(prompt_type="points", points=[(200, 150)], overlay=False)
    async with (
        AsyncSegmenterClient(f"127.0.0.1:{cached.port}", timeout=120) as c,
        AsyncSegmenterClient(f"127.0.0.1:{plain.port}", timeout=120) as p,
    ):
        info = await c.server_info()
        assert info.limits.embedding_cache_bytes == 256 << 20
        up = await c.upload(photo_bytes)
        first = await c.segment(file_id=up.file_id, points_per_side=4, overlay=False)  # encodes
        assert first.timings.encoder_ms > 0
        metrics = cached.service.metrics
        enc_before = metrics.value("seglabel_execution_count_total", stage="encoder")
        clicks = [await c.segment(file_id=up.file_id, **click) for _ in range(3)]
        inline = await c.segment(photo_bytes, **click)  # the same bytes sent inline hit too
        assert metrics.value("seglabel_execution_count_total", stage="encoder") == enc_before
        assert metrics.value("seglabel_embedding_cache_hits_total") == 4
        assert metrics.value("seglabel_embedding_cache_misses_total") == 1
        assert metrics.value("seglabel_embedding_cache_bytes") > 0
        reference = await p.segment(photo_bytes, **click)
        assert (await p.server_info()).limits.embedding_cache_bytes == 0 and reference.timings.encoder_ms > 0
    for resp in (*clicks, inline):
        assert _masks(resp) == _masks(reference) and resp.mask_count == 1
        assert [lab.label for lab in resp.labels] == [lab.label for lab in reference.labels]


def test_cached_features_do_not_hold_the_rest_of_their_batch():
    batch = np.zeros((4, 8, 16, 16), np.float32)
    cache = EmbeddingCache(10 << 20)
    cache.put("a", ImageFeatures({"image_embed": batch[1:2]}))
    kept = cache.get("a").arrays["image_embed"]
    assert kept.base is None and kept.nbytes == batch.nbytes // 4 and cache.bytes == kept.nbytes
    cache.put("b", ImageFeatures({"image_embed": np.zeros((1, 1 << 20), np.float32)}))  # 4 MB
    cache.put("c", ImageFeatures({"image_embed": np.zeros((1, 2 << 20), np.float32)}))  # 8 MB: evicts a, b
    assert list(cache.items) == [("c", "features")] and cache.bytes == 8 << 20
    cache.put("huge", ImageFeatures({"image_embed": np.zeros((1, 4 << 20), np.float32)}))  # over: not kept
    assert cache.get("huge") is None and list(cache.items) == [("c", "features")]


def test_the_decoded_image_is_kept_read_only_beside_its_features():
    cache = EmbeddingCache(8 << 20)
    rgb = np.arange(512 * 512 * 3, dtype=np.uint8).reshape(512, 512, 3)  # 768 KB: <= 1/8 of the budget
    cache.put_image("a", rgb[:, :, :])
    kept = cache.image("a")
    assert np.array_equal(kept, rgb) and not kept.flags.writeable and cache.bytes == rgb.nbytes
    with pytest.raises(ValueError):
        kept[0, 0, 0] = 1  # a request can never alter what the next one reads
    cache.put_image("big", np.zeros((1024, 1024, 3), np.uint8))  # 3 MB: over 1/8 of the budget, not kept
    assert cache.image("big") is None and cache.image("nothing") is None
