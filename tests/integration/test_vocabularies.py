"""Named vocabularies, few-shot examples, multi-label scores and relabelling, on a real server with
the tiny models (RANDOM weights: the tests prove the mechanics, not label quality).

With random weights every crop embedding is close to every other (cosine 0.97-0.999 here), and
the text tower's margins are arbitrary. So the taught labels share one prompt ("a photo of a
thing": their zero-shot scores tie exactly, as for labels whose names mean nothing to CLIP) and the
examples alone decide; vocabularies that must tell near neighbours apart set a sharper beta, as a
user would for a model whose embeddings crowd together."""

from __future__ import annotations

import asyncio
import io

import grpc
import numpy as np
import pytest
from PIL import Image, ImageDraw
from seglabel_client.client import AsyncSegmenterClient, example

THING = ["a photo of a thing."]


def scene(kind: str, dx: int = 0, dy: int = 0, scale: float = 1.0, quality: int | None = None):
    """(encoded image, box around the object): object A (red disc, yellow core) or B (blue stripes)
    on the same noisy background; moved, scaled or JPEG-recompressed."""
    rng = np.random.default_rng(1)
    im = Image.fromarray((rng.random((160, 200, 3)) * 60 + 100).astype(np.uint8))
    d = ImageDraw.Draw(im)
    cx, cy, r = 90 + dx, 80 + dy, 40 * scale
    if kind == "A":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(220, 30, 30))
        d.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=(250, 220, 0))
    else:
        for i in range(6):
            d.rectangle([cx - r, cy - r + i * r / 3, cx + r, cy - r + i * r / 3 + r / 6], fill=(20, 40, 200))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality) if quality else im.save(buf, format="PNG")
    return buf.getvalue(), (cx - r - 4, cy - r - 4, cx + r + 4, cy + r + 4)


VARIANTS = {
    "original": {},
    "shifted": {"dx": 25, "dy": 10},
    "scaled": {"scale": 0.8},
    "recompressed": {"quality": 50},
}


def client_for(server) -> AsyncSegmenterClient:
    return AsyncSegmenterClient(f"127.0.0.1:{server.port}", timeout=120)


async def segment_object(c, kind: str, variant: str, **kw):
    data, box = scene(kind, **VARIANTS[variant])
    up = await c.upload(data)
    return (
        up.file_id,
        box,
        await c.segment(file_id=up.file_id, prompt_type="box", boxes=[box], overlay=False, **kw),
    )


def scores(label) -> dict[str, float]:
    return {t.label: t.confidence for t in label.top_k}


async def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


async def test_examples_teach_labels_and_removing_them_restores_zero_shot(make_server):
    server = await make_server()
    async with client_for(server) as c:
        labels = [{"name": "part-A", "prompts": THING}, {"name": "part-B", "prompts": THING}, "cat"]
        await c.create_vocabulary("parts", labels, beta=100)
        before = {}
        for kind in "AB":
            for variant in VARIANTS:
                _, _, r = await segment_object(c, kind, variant, vocabulary_name="parts", top_k=3)
                before[kind, variant] = r
        # zero-shot: the two taught labels tie exactly (one prompt), whatever else wins
        for r in before.values():
            s = scores(r.labels[0])
            assert s["part-A"] == s["part-B"]
        # one example each: the original object's mask, from its answer (no CLIP run)
        for kind in "AB":
            got = await c.add_examples(
                "parts", f"part-{kind}", [example(request_id=before[kind, "original"].request_id)]
            )
            assert len(got.example_ids) == 1
        v = await c.get_vocabulary("parts")
        assert [(lab.label.name, lab.positives) for lab in v.labels] == [
            ("part-A", 1),
            ("part-B", 1),
            ("cat", 0),
        ]
        assert v.revision == 3 and v.clip_model == (await c.server_info()).clip_model
        for (kind, variant), r in before.items():
            again = await c.relabel(r.request_id, vocabulary_name="parts", top_k=3)
            s = scores(again.labels[0])
            other = "B" if kind == "A" else "A"
            assert s[f"part-{kind}"] > s[f"part-{other}"], (kind, variant, s)
            fresh = (await segment_object(c, kind, variant, vocabulary_name="parts", top_k=3))[2]
            # relabel equals a fresh Segment with the same vocabulary, mask for mask
            assert [lab.label for lab in fresh.labels] == [lab.label for lab in again.labels]
            np.testing.assert_allclose(
                [t.confidence for t in fresh.labels[0].top_k],
                [t.confidence for t in again.labels[0].top_k],
                atol=1e-5,
            )
        # a label whose name means nothing, taught by one example, is recognised
        _, _, shifted = await segment_object(c, "A", "shifted", vocabulary_name="parts")
        assert shifted.labels[0].label in ("part-A", "cat")
        # removing the examples brings the zero-shot answer back, bit for bit
        for kind in "AB":
            await c.remove_examples("parts", f"part-{kind}")
        for key, r in before.items():
            again = await c.relabel(r.request_id, vocabulary_name="parts", top_k=3)
            assert [(t.label, t.confidence) for t in again.labels[0].top_k] == [
                (t.label, t.confidence) for t in r.labels[0].top_k
            ], key


async def test_a_negative_example_suppresses_a_label(make_server):
    server = await make_server()
    async with client_for(server) as c:
        await c.create_vocabulary(
            "neg", [{"name": "part-A", "prompts": THING}, {"name": "part-B", "prompts": THING}]
        )
        fid, box, r = await segment_object(c, "A", "original", vocabulary_name="neg")
        base = scores(r.labels[0])
        await c.add_examples("neg", "part-A", [example(fid, box=box, negative=True)])
        after = scores((await c.relabel(r.request_id, vocabulary_name="neg")).labels[0])
        assert base["part-A"] == base["part-B"] and after["part-A"] < after["part-B"]
        multi = await c.relabel(r.request_id, vocabulary_name="neg", label_mode="multi", top_k=2)
        m = scores(multi.labels[0])
        assert m["part-A"] < m["part-B"]


async def test_multi_label_thresholds_are_fitted_from_positives_and_negatives(make_server):
    server = await make_server()
    async with client_for(server) as c:
        await c.create_vocabulary("multi", [{"name": "part-A", "prompts": THING}, "cat", "dog"], beta=100)
        answers = {}
        for kind in "AB":
            for variant in VARIANTS:
                answers[kind, variant] = (await segment_object(c, kind, variant, labels=["x"]))[2]
        pos = [example(request_id=answers["A", v].request_id) for v in VARIANTS]
        neg = [example(request_id=answers["B", v].request_id, negative=True) for v in VARIANTS]
        v = (await c.add_examples("multi", "part-A", pos + neg)).vocabulary
        lab = v.labels[0]
        assert (lab.positives, lab.negatives, lab.threshold_source) == (4, 4, "fitted")
        assert "4 positives and 4 negatives" in lab.threshold_note and "separate" in lab.threshold_note
        assert v.labels[1].threshold_source == "default" and v.labels[1].threshold == pytest.approx(0.5)
        for (kind, variant), r in answers.items():
            got = (
                await c.relabel(r.request_id, vocabulary_name="multi", label_mode="multi", top_k=3)
            ).labels[0]
            above = {t.label for t in got.labels}
            assert ("part-A" in above) == (kind == "A"), (kind, variant, got)
            for t in got.labels:  # each label carries the threshold it passed
                assert t.confidence >= t.threshold
        # a request's threshold overrides the fitted one; an empty answer is valid
        r = answers["A", "original"]
        got = (await c.relabel(r.request_id, vocabulary_name="multi", label_mode="multi",
                               thresholds={"part-A": 1.0, "cat": 1.0, "dog": 1.0})).labels[0]  # fmt: skip
        assert list(got.labels) == [] and got.label == "unknown"
        # the segment answer itself, in multi mode, says so
        seg = (await segment_object(c, "A", "shifted", vocabulary_name="multi", label_mode="multi"))[2]
        assert seg.label_mode == 2 and "part-A" in {t.label for t in seg.labels[0].labels}


async def test_bad_input_is_refused_and_writes_nothing(make_server):
    server = await make_server(max_examples_per_label=3)
    async with client_for(server) as c:
        info = await c.server_info()
        assert info.limits.max_examples_per_label == 3 and info.limits.max_vocabularies == 1000
        assert info.limits.answer_cache_bytes == 64 << 20 and info.vocabulary_store == "memory"
        await c.create_vocabulary("v1", ["cat"])
        assert await code_of(c.create_vocabulary("v1", ["dog"])) == grpc.StatusCode.ALREADY_EXISTS
        assert (await c.create_vocabulary("v1", ["dog"], replace=True)).labels[0].label.name == "dog"
        for bad in ("", "a b", "-x", "x" * 65, "a/b"):
            assert await code_of(c.create_vocabulary(bad, ["cat"])) == grpc.StatusCode.INVALID_ARGUMENT
        for labels in ([""], ["cat", "cat"], ["a\nb"], ["x" * 101]):
            assert await code_of(c.create_vocabulary("v2", labels)) == grpc.StatusCode.INVALID_ARGUMENT
        assert await code_of(c.get_vocabulary("nope")) == grpc.StatusCode.NOT_FOUND
        assert await code_of(c.delete_vocabulary("nope")) == grpc.StatusCode.NOT_FOUND
        data, box = scene("A")
        fid = (await c.upload(data)).file_id
        assert await code_of(c.add_examples("nope", "cat", [example(fid)])) == grpc.StatusCode.NOT_FOUND
        assert await code_of(c.segment(data, vocabulary_name="nope")) == grpc.StatusCode.NOT_FOUND
        assert (
            await code_of(c.segment(data, vocabulary_name="v1", labels=["a"]))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        assert await code_of(c.relabel("0" * 16, labels=["a"])) == grpc.StatusCode.NOT_FOUND
        revision = (await c.get_vocabulary("v1")).revision
        good = example(fid, box=box)
        h, w = 160, 200
        from pycocotools import mask as mask_utils

        empty_rle = mask_utils.encode(np.zeros((h, w), np.uint8, order="F"))
        for bad in (
            example("f" * 64),  # unknown upload
            example(fid, box=(10, 10, 10, 50)),  # empty box
            example(fid, box=(0, 0, w + 5, 50)),  # outside the image
            example(fid, mask=empty_rle),  # empty mask
            example(fid, mask={"size": [10, 10], "counts": "100"}),  # another image's size
            example(request_id="deadbeef"),  # no such answer
        ):
            code = await code_of(c.add_examples("v1", "dog", [good, bad]))
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), bad
        assert (await c.get_vocabulary("v1")).revision == revision  # nothing was written
        await c.add_examples("v1", "dog", [good, good])
        over = c.add_examples("v1", "dog", [good, good])
        assert await code_of(over) == grpc.StatusCode.RESOURCE_EXHAUSTED
        v = await c.get_vocabulary("v1")
        assert v.revision == revision + 1 and v.labels[0].positives == 2
        assert await code_of(c.remove_examples("v1", "dog", ids=["nope"])) == grpc.StatusCode.NOT_FOUND
        assert await code_of(c.remove_examples("v1", "bird")) == grpc.StatusCode.NOT_FOUND
        r = await c.segment(data, prompt_type="box", boxes=[box], labels=["a", "b"], overlay=False)
        assert await code_of(c.relabel(r.request_id, vocabulary_name="v1", thresholds={"zebra": 0.5})) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        assert await code_of(c.relabel(r.request_id, labels=["a"], thresholds={"a": 2.0})) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (await c.delete_vocabulary("v1")).deleted
        assert [v.name for v in (await c.list_vocabularies()).vocabularies] == []


@pytest.mark.parametrize("store", ["memory", "disk", "redis"])
async def test_concurrent_writers_lose_no_example(make_server, tmp_path, request, store):
    spec = {"memory": "memory", "disk": f"disk:{tmp_path}"}.get(store) or request.getfixturevalue("redis_url")
    server = await make_server(vocabulary_store=spec)
    async with client_for(server) as c:
        await c.create_vocabulary(f"many-{store}", ["cat"])
        data, box = scene("B")
        fid = (await c.upload(data)).file_id
        writers = 12
        got = await asyncio.gather(
            *[
                c.add_examples(f"many-{store}", f"label-{i % 3}", [example(fid, box=box)])
                for i in range(writers)
            ]
        )
        ids = {i for g in got for i in g.example_ids}
        v = await c.get_vocabulary(f"many-{store}")
        stored = {e.id for lab in v.labels for e in lab.examples}
        assert len(ids) == writers and stored == ids and v.revision == 1 + writers
        await c.delete_vocabulary(f"many-{store}")


async def test_vocabularies_survive_a_restart_on_disk_and_are_shared_on_redis(
    make_server, tmp_path, redis_url
):
    for spec in (f"disk:{tmp_path}", redis_url):
        first = await make_server(upload_store=spec)
        async with client_for(first) as c:
            await c.create_vocabulary("kept", [{"name": "part-A", "prompts": THING}, "cat"], replace=True)
            fid, box, r = await segment_object(c, "A", "original", vocabulary_name="kept")
            await c.add_examples("kept", "part-A", [example(fid, box=box)])
            taught = await c.relabel(r.request_id, vocabulary_name="kept")
        if spec.startswith("disk:"):
            await first.stop(0)
        second = await make_server(upload_store=spec)
        async with client_for(second) as c:
            v = await c.get_vocabulary("kept")
            assert (
                v.labels[0].positives == 1 and spec.split(":")[0] in (await c.server_info()).vocabulary_store
            )
            again = await segment_object(c, "A", "original", vocabulary_name="kept")
            assert [t.label for t in again[2].labels[0].top_k] == [t.label for t in taught.labels[0].top_k]
            if not spec.startswith("disk:"):  # a Relabel routed to another replica finds the answer
                shared = await c.relabel(r.request_id, vocabulary_name="kept")
                assert [t.confidence for t in shared.labels[0].top_k] == [
                    t.confidence for t in taught.labels[0].top_k
                ]
            await c.delete_vocabulary("kept")


async def test_a_vocabulary_of_another_model_is_rebuilt_or_refused(make_server):
    from seglabel_server.vocabulary import Vocabulary

    server = await make_server()
    store = server.service.vocabularies.store
    async with client_for(server) as c:
        await c.create_vocabulary("old", ["cat", "dog"])
        fid, box, r = await segment_object(c, "A", "original", labels=["x"])
        await c.add_examples("old", "cat", [example(fid, box=box)])
        model = (await c.server_info()).clip_model

        def built_with(other: str, source: dict | None = None):
            def edit(current: bytes) -> bytes:
                v = Vocabulary.from_json(current)
                v.clip_model = other
                if source is not None:
                    v.labels[0].examples[0].source = source
                return v.to_json()

            store.update("old", edit)

        built_with("ViT-L-14@0123456789abcdef")
        await c.segment(file_id=fid, prompt_type="box", boxes=[box], vocabulary_name="old", overlay=False)
        assert (await c.get_vocabulary("old")).clip_model == model  # embedded again from the upload
        built_with("ViT-L-14@0123456789abcdef", source={})  # its source is gone
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.segment(file_id=fid, prompt_type="box", boxes=[box], vocabulary_name="old", overlay=False)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "ViT-L-14" in err.value.details()


async def test_relabel_of_an_expired_answer_is_not_found(make_server):
    server = await make_server(answer_cache_mb=0)
    async with client_for(server) as c:
        data, box = scene("A")
        r = await c.segment(data, prompt_type="box", boxes=[box], labels=["a", "b"], overlay=False)
        assert r.request_id == "" and (await c.server_info()).limits.answer_cache_bytes == 0
    server = await make_server()
    async with client_for(server) as c:
        r = await c.segment(data, prompt_type="box", boxes=[box], labels=["a", "b"], overlay=False)
        server.service.lifecycle.answers.entries.clear()  # what eviction does
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.relabel(r.request_id, labels=["a", "b"])
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "answer cache" in err.value.details()


async def test_http_routes_teach_and_relabel(make_server):
    """The page's click-to-correct over HTTP: segment, add the clicked mask as an example of the
    typed label, relabel: the mask now carries it."""
    import requests

    from tests.system import free_port

    port = free_port()
    await make_server(http_port=port)
    base = f"http://127.0.0.1:{port}"
    data, box = scene("A")

    def session() -> dict:
        fid = requests.post(f"{base}/upload", files={"image": ("a.png", data)}).json()["file_id"]
        # alpha 100: random weights' text margins are ~10x real CLIP's, the examples must outweigh them
        made = requests.post(f"{base}/vocabularies", json={"name": "page", "labels": ["cat", {"name": "dog"}],
                                                           "alpha": 100})  # fmt: skip
        assert made.status_code == 200 and made.json()["labels"][1]["label"]["name"] == "dog"
        assert (
            requests.post(f"{base}/vocabularies", json={"name": "page", "labels": ["x"]}).status_code == 409
        )
        seg = requests.post(f"{base}/segment", json={"file_id": fid, "prompt_type": "box", "boxes": [dict(
            zip(("x0", "y0", "x1", "y1"), box))], "vocabulary_name": "page", "return_overlay": False}).json()  # fmt: skip
        rid = seg["request_id"]
        added = requests.post(f"{base}/vocabularies/page/examples", json={
            "label": "part-7731", "examples": [{"request_id": rid, "mask_index": 0}]}).json()  # fmt: skip
        again = requests.post(f"{base}/relabel", json={"request_id": rid, "vocabulary_name": "page"}).json()
        multi = requests.post(f"{base}/relabel", json={"request_id": rid, "vocabulary_name": "page",
                                                       "label_mode": "multi"}).json()  # fmt: skip
        listed = requests.get(f"{base}/vocabularies").json()
        bad = requests.post(f"{base}/vocabularies/page/examples", json={"label": "x", "examples": [{"file_id": fid,
                            "box": {"x0": 5, "y0": 5, "x1": 5, "y1": 9}}]})  # fmt: skip
        gone = requests.post(f"{base}/relabel", json={"request_id": "f00", "vocabulary_name": "page"})
        removed = requests.post(
            f"{base}/vocabularies/page/examples/remove", json={"label": "part-7731", "remove_label": True}
        ).json()
        deleted = requests.delete(f"{base}/vocabularies/page").json()
        return dict(seg=seg, added=added, again=again, multi=multi, listed=listed, bad=bad, gone=gone,
                    removed=removed, deleted=deleted)  # fmt: skip

    r = await asyncio.to_thread(session)
    assert r["seg"]["labels"][0]["label"] in ("cat", "dog") and r["seg"]["label_mode"] == "LABEL_MODE_SINGLE"
    assert len(r["added"]["example_ids"]) == 1 and r["added"]["vocabulary"]["revision"] == 2
    assert r["again"]["labels"][0]["label"] == "part-7731" and r["again"]["timings"]["total_ms"] > 0
    assert r["multi"]["label_mode"] == "LABEL_MODE_MULTI" and "labels" in r["multi"]["labels"][0]
    assert (
        r["listed"]["vocabularies"][0]["name"] == "page" and r["listed"]["vocabularies"][0]["examples"] == 1
    )
    assert r["bad"].status_code == 400 and "empty" in r["bad"].json()["error"]["message"]
    assert r["gone"].status_code == 404
    assert [lab["label"]["name"] for lab in r["removed"]["labels"]] == ["cat", "dog"]
    assert r["deleted"] == {"deleted": True}


async def test_a_vocabulary_that_adds_a_label_embeds_only_the_new_labels_prompts(make_server):
    """The page's "Teach into" makes a vocabulary of the labels in use plus the taught one: the
    labels already embedded are not run through the text tower again (the text stage's inference
    count, as the metrics endpoint shows it, grows by the new label's prompts only)."""
    from tests.integration.conftest import metric

    server = await make_server()
    texts = lambda: metric(server, "seglabel_inference_count_total", stage="text")  # noqa: E731
    async with client_for(server) as c:
        base = ["quokka-7", "teapot-3", "kayak-9", "lantern-2"]  # in no default vocabulary
        start = texts()
        _, _, first = await segment_object(c, "A", "original", labels=base)
        per_label = (texts() - start) / len(base)
        assert per_label >= 1 and per_label == int(per_label)  # the server's templates per label
        await c.create_vocabulary("plain", base)  # its description embeds MULTI's neutral prompt once
        before = texts()
        await c.create_vocabulary("taught", [*base, {"name": "part-A", "prompts": THING}])
        _, _, again = await segment_object(c, "A", "original", vocabulary_name="taught")
        assert texts() - before == len(THING)  # only part-A's one prompt
        # the same embeddings as a vocabulary embedded from scratch would have
        fresh = (await segment_object(c, "A", "original", labels=base))[2]
        assert [(t.label, round(t.confidence, 5)) for t in fresh.labels[0].top_k] == [
            (t.label, round(t.confidence, 5)) for t in first.labels[0].top_k
        ]
        assert {t.label for t in again.labels[0].top_k} <= {*base, "part-A"}
