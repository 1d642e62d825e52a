"""Upload stores: the in-memory default, the local-disk store (atomic, bounded, survives a restart)
and Redis (shared by every server pointed at it), behind the same Upload / Segment calls."""

from __future__ import annotations

import os
import threading

import pytest
from seglabel_client import sample_image_bytes
from seglabel_client.client import AsyncSegmenterClient
from seglabel_server.errors import InvalidArgument, UnknownFile
from seglabel_server.service.config import ServerConfig
from seglabel_server.storage.uploads import DiskStore, MemoryStore, RedisStore, file_id_of, open_store

LOOSE = dict(pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1)


def blobs(n: int, size: int) -> list[bytes]:
    return [bytes([i]) * size for i in range(n)]


@pytest.mark.parametrize("kind", ["memory", "disk", "redis"])
def test_every_store_is_content_addressed_and_says_unknown(kind, tmp_path, request):
    store = {
        "memory": lambda: MemoryStore(1 << 20),
        "disk": lambda: DiskStore(tmp_path / "up", 1 << 20),
        "redis": lambda: RedisStore(request.getfixturevalue("redis_url"), ttl_s=60),
    }[kind]()
    a, b = b"first image bytes", b"second image bytes"
    fa = store.put(a, "a.jpg")
    assert fa == file_id_of(a) and store.put(a) == fa  # the same bytes are one entry
    assert store.get(fa) == a and store.filename(fa) == "a.jpg"  # a later unnamed put keeps the name
    fb = store.put(b, "b.png")
    assert store.get(fb) == b and store.filename(fb) == "b.png"
    with pytest.raises(UnknownFile, match="unknown file_id"):
        store.get("0" * 64)
    assert store.filename("0" * 64) == ""
    store.close()


def test_memory_and_disk_drop_the_least_recently_used_past_their_bound(tmp_path):
    for store in (MemoryStore(3000), DiskStore(tmp_path / "up", 3000)):
        ids = [store.put(b) for b in blobs(3, 1000)]
        store.get(ids[0])  # used: the oldest is now ids[1]
        if isinstance(store, DiskStore):  # access times one second apart, whatever the clock's grain
            for age, fid in zip((30, 20, 10), (ids[1], ids[2], ids[0])):
                os.utime(store._path(fid), (1e9 - age, 1e9 - age))
        newest = store.put(bytes([9]) * 1000)
        assert store.get(ids[0]) and store.get(ids[2]) and store.get(newest)
        with pytest.raises(UnknownFile):
            store.get(ids[1])
        big = store.put(bytes([7]) * 5000)  # larger than the bound: kept alone (the newest always is)
        assert store.get(big)


def test_disk_store_writes_atomically_and_reads_its_folder_back(tmp_path):
    root = tmp_path / "up"
    store = DiskStore(root, 1 << 20)
    ids = [store.put(b, f"{i}.bin") for i, b in enumerate(blobs(4, 100))]
    assert not list(root.glob("**/.tmp-*"))  # temporaries renamed into place
    again = DiskStore(root, 1 << 20)  # a new process on the same folder
    assert again.total == 400 and [again.get(i) for i in ids] == blobs(4, 100)
    assert again.filename(ids[2]) == "2.bin"

    # concurrent writers of the same and different bytes: every entry whole
    data = blobs(8, 50_000)
    threads = [threading.Thread(target=lambda d=d: store.put(d)) for d in data * 3]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(store.get(file_id_of(d)) == d for d in data)


def test_store_specs(tmp_path, redis_url):
    assert isinstance(open_store("memory", 1, 1), MemoryStore)
    assert isinstance(open_store(f"disk:{tmp_path}", 1, 1), DiskStore)
    assert isinstance(open_store(redis_url, 1, 1), RedisStore)
    for bad in ("disk:", "s3://bucket", "memcached://x"):
        with pytest.raises(InvalidArgument):
            open_store(bad, 1, 1)


def test_redis_entries_expire_after_their_ttl_and_a_read_renews_it(redis_url):
    import redis

    store = RedisStore(redis_url, ttl_s=100)
    fid = store.put(b"expiring upload")
    raw = redis.Redis.from_url(redis_url)
    key = store.prefix + fid
    raw.expire(key, 5)
    store.get(fid)
    assert 95 <= raw.ttl(key) <= 100
    raw.delete(key)
    with pytest.raises(UnknownFile):
        store.get(fid)


async def _upload_and_segment(make_server, photo_bytes, store: str, **kw):
    server = await make_server(upload_store=store, **kw)
    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}") as c:
        up = await c.upload(photo_bytes, filename="astronaut.jpg")
        resp = await c.segment(file_id=up.file_id, points_per_side=2, max_masks=2, overlay=False, **LOOSE)
    return server, up.file_id, resp


async def test_an_upload_on_disk_survives_a_server_restart(make_server, photo_bytes, tmp_path):
    store = f"disk:{tmp_path / 'uploads'}"
    first, fid, before = await _upload_and_segment(make_server, photo_bytes, store)
    await first.stop(0)
    second = await make_server(upload_store=store)
    async with AsyncSegmenterClient(f"127.0.0.1:{second.port}") as c:
        after = await c.segment(file_id=fid, points_per_side=2, max_masks=2, overlay=False, **LOOSE)
        info = await c.server_info()
    assert [m.rle.counts for m in after.masks] == [m.rle.counts for m in before.masks]
    assert second.service.images.files.filename(fid) == "astronaut.jpg"
    assert "disk" in info.upload_store
    # the in-memory store (the default) does not survive: a restarted server says NOT_FOUND
    mem, mem_fid, _ = await _upload_and_segment(make_server, sample_image_bytes("coffee.jpg"), "memory")
    await mem.stop(0)
    fresh = await make_server()
    assert isinstance(fresh.service.images.files, MemoryStore) and ServerConfig().upload_store == "memory"
    async with AsyncSegmenterClient(f"127.0.0.1:{fresh.port}") as c:
        with pytest.raises(Exception, match="NOT_FOUND|unknown file_id"):
            await c.segment(file_id=mem_fid, points_per_side=2, overlay=False)


async def test_two_servers_on_one_redis_share_uploads(make_server, photo_bytes, redis_url):
    a, fid, from_a = await _upload_and_segment(make_server, photo_bytes, redis_url)
    b = await make_server(upload_store=redis_url)
    async with AsyncSegmenterClient(f"127.0.0.1:{b.port}") as c:
        from_b = await c.segment(file_id=fid, points_per_side=2, max_masks=2, overlay=False, **LOOSE)
    assert [m.rle.counts for m in from_b.masks] == [m.rle.counts for m in from_a.masks]
    assert [lab.label for lab in from_b.labels] == [lab.label for lab in from_a.labels]
