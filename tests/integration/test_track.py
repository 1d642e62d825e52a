"""The ``Track`` stream over real gRPC (issue 34), against sam2's own ``SAM2VideoPredictor`` on the
same checkpoint: a repository exported from a tiny SAM2.1 checkpoint (random weights, the object
score head scaled so that objects are present and absent), served on the embedded default, and
sam2's predictor built on the same file; the same JPEG frames, two objects prompted on frame 0 (a
box, a click) and a third clicked on a later frame. Then the stream's bad input: each a clear
status, the server unharmed, no session left open."""

from __future__ import annotations

import asyncio
import json
import shutil

import grpc
import numpy as np
import pytest
import torch
from seglabel_client.client import AsyncSegmenterClient
from seglabel_client.track import track_clicks, track_frame, track_open, track_prompt
from seglabel_export import sources
from seglabel_server.amg import decode_rle

from tests.export.video_models import randomise_zero_inits
from tests.integration.conftest import metric

FRAMES, LATER, H, W = 12, 6, 72, 96
PROMPTS = {0: [track_prompt(1, box=(8, 10, 34, 30)), track_prompt(2, [(62, 44, True)])],
           LATER: [track_prompt(3, [(50, 20, True)])]}  # fmt: skip


@pytest.fixture(scope="session")
def tuned(tmp_path_factory):
    """A tiny checkpoint with present and absent objects, its repository, and the video frames:
    made once per run (xdist's workers share the folder, as the tiny repository's)."""
    import os

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    root = root / "shared-track"
    ckpt, repo, frames = root / "sam2_tiny_tuned.pt", root / "models", root / "frames"
    with FileLock(str(root) + ".lock"):
        if not (root / "done").is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            _make_tuned(ckpt, repo, frames)
            (root / "done").touch()
    return ckpt, repo, frames


def _make_tuned(ckpt, repo, frames) -> None:
    from PIL import Image
    from sam2.build_sam import build_sam2_video_predictor
    from seglabel_export.exporter import export_repository

    torch.manual_seed(3)
    p = build_sam2_video_predictor(sources.SAM2_CONFIGS["tiny"], None, device="cpu",
                                   hydra_overrides_extra=list(sources.SAM2_TINY_OVERRIDES))  # fmt: skip
    randomise_zero_inits(p)
    last = p.sam_mask_decoder.pred_obj_score_head.layers[-1]
    with torch.no_grad():
        # seed 3: object 1 absent on its prompted frame (score -1.0), present after; every |score| >= 0.93
        last.weight *= 40
        last.bias -= 2.5
    torch.save({"model": p.state_dict()}, ckpt)
    export_repository(repo, f"tiny:{ckpt}", "tiny", log=lambda m: None)
    frames.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(60, 120, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:H, :W]
    for t in range(FRAMES):
        f = base.copy()
        f[10 + t // 3 : 30 + t // 3, 8 + t : 34 + t] = (220, 40, 40)
        f[(yy - 44 - t // 2) ** 2 + (xx - 62) ** 2 < 81] = (40, 60, 230)
        Image.fromarray(f).save(frames / f"{t:05d}.jpg", quality=95)


def sams(ckpt, frames, clicks: dict | None = None) -> tuple[dict, dict]:
    """sam2's predictor on the checkpoint: {frame: {obj: mask}}, {(frame, obj): score}. With
    ``clicks`` ({frame: prompts}, a frame before LATER): propagated to that frame, clicked there
    (corrections kept as prompted frames: ``add_all_frames_to_correct_as_cond``), and on."""
    from sam2.build_sam import build_sam2_video_predictor

    extra = ["++model.add_all_frames_to_correct_as_cond=true"] if clicks else []
    pred = build_sam2_video_predictor(sources.SAM2_CONFIGS["tiny"], str(ckpt), device="cpu",
                                      hydra_overrides_extra=[*sources.SAM2_TINY_OVERRIDES, *extra])  # fmt: skip
    state = pred.init_state(video_path=str(frames))
    masks: dict = {}

    def add(t, prompts):
        for q in prompts:
            box = [q.box.x0, q.box.y0, q.box.x1, q.box.y1] if q.HasField("box") else None
            pts = [[p.x, p.y] for p in q.points] or None
            labels = [int(p.positive) for p in q.points] or None
            pred.add_new_points_or_box(state, t, q.object_id, points=pts, labels=labels, box=box)

    add(0, PROMPTS[0])
    stops = sorted(clicks or {})
    start = 0
    for stop in stops:
        for t, ids, logits in pred.propagate_in_video(
            state, start_frame_idx=start, max_frame_num_to_track=stop - start
        ):
            masks[t] = {i: logits[j, 0].numpy() > 0 for j, i in enumerate(ids)}
        add(stop, clicks[stop])
        start = stop
    for t, ids, logits in pred.propagate_in_video(
        state, start_frame_idx=start, max_frame_num_to_track=LATER - 1 - start
    ):
        masks[t] = {i: logits[j, 0].numpy() > 0 for j, i in enumerate(ids)}
    add(LATER, PROMPTS[LATER])
    for t, ids, logits in pred.propagate_in_video(state, start_frame_idx=LATER):
        masks[t] = {i: logits[j, 0].numpy() > 0 for j, i in enumerate(ids)}
    scores = {}
    for idx, out in state["output_dict_per_obj"].items():
        for kind in out.values():
            for t, o in kind.items():
                scores[(t, state["obj_idx_to_id"][idx])] = float(o["object_score_logits"].reshape(-1)[0])
    return masks, scores


async def test_track_stream_equals_sam2_video_predictor(make_server, tuned):
    ckpt, repo, frames = tuned
    server = await make_server(repo=repo)
    want_masks, want_scores = await asyncio.to_thread(sams, ckpt, frames)
    requests = [track_open("file", FRAMES)] + [
        track_frame(t, (frames / f"{t:05d}.jpg").read_bytes(), PROMPTS.get(t, ())) for t in range(FRAMES)
    ]
    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}") as c:
        info = await c.server_info()
        replies = [r async for r in c.track(iter(requests))]
    assert info.tracking_unavailable_reason == "" and info.limits.max_track_objects == 32
    assert [r.frame_index for r in replies] == list(range(FRAMES))
    ious, present = {1: [], 2: [], 3: []}, []
    for r in replies:
        assert (r.width, r.height) == (W, H) and r.timings.encoder_ms > 0 and r.timings.memory_ms >= 0
        assert [o.object_id for o in r.objects] == ([1, 2] if r.frame_index < LATER else [1, 2, 3])
        for o in r.objects:
            mask = decode_rle({"size": list(o.rle.size), "counts": o.rle.counts})
            want = want_masks[r.frame_index][o.object_id]
            union = (mask | want).sum()
            ious[o.object_id].append(1.0 if union == 0 else (mask & want).sum() / union)
            present.append((o.present, want_scores[(r.frame_index, o.object_id)] > 0))
            assert o.prompted == (o.object_id in [q.object_id for q in PROMPTS.get(r.frame_index, ())])
            assert o.area == mask.sum() and (o.area == 0) == (len(o.bbox) == 0)
    assert all(np.mean(v) >= 0.99 for v in ious.values()), {k: np.round(v, 3) for k, v in ious.items()}
    assert all(a == b for a, b in present), present
    assert {b for _, b in present} == {True, False}, "both decisions occur"
    assert replies[-1].state_bytes > 0
    assert (
        metric(server, "seglabel_track_sessions") == 0
        and metric(server, "seglabel_track_frames_total") == FRAMES
    )


CLICKED = 3  # a paused frame: object 2 (tracked there) corrected, object 4 started


async def test_track_clicks_on_an_answered_frame_equal_sam2(make_server, tuned):
    """Clicks on the frame last answered (a message without an image): the reply is that frame
    again with every object, the clicked ones changed; the tracks after it are sam2's predictor's
    with the same clicks (propagated to the frame, clicked, propagated on)."""
    ckpt, repo, frames = tuned
    server = await make_server(repo=repo)
    clicks = [track_prompt(2, [(62, 45, True), (70, 40, False)]), track_prompt(4, [(20, 55, True)])]
    want_masks, want_scores = await asyncio.to_thread(sams, ckpt, frames, {CLICKED: clicks})
    requests = [track_open("file", FRAMES)]
    for t in range(FRAMES):
        requests.append(track_frame(t, (frames / f"{t:05d}.jpg").read_bytes(), PROMPTS.get(t, ())))
        if t == CLICKED:
            requests.append(track_clicks(t, clicks))
    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}") as c:
        replies = [r async for r in c.track(iter(requests))]
    assert [r.frame_index for r in replies] == sorted([*range(FRAMES), CLICKED])
    before, after = replies[CLICKED], replies[CLICKED + 1]
    assert [o.object_id for o in after.objects] == [1, 2, 4] and after.timings.decoder_ms > 0
    assert [o.prompted for o in after.objects] == [False, True, True]
    assert after.objects[0] == before.objects[0]  # untouched
    assert after.objects[1].rle != before.objects[1].rle  # the correction changed the mask
    ious: dict[int, list[float]] = {1: [], 2: [], 3: [], 4: []}
    for r in replies[:CLICKED] + replies[CLICKED + 1 :]:
        for o in r.objects:
            mask = decode_rle({"size": list(o.rle.size), "counts": o.rle.counts})
            want = want_masks[r.frame_index][o.object_id]
            union = (mask | want).sum()
            ious[o.object_id].append(1.0 if union == 0 else (mask & want).sum() / union)
            assert o.present == (want_scores[(r.frame_index, o.object_id)] > 0), (r.frame_index, o.object_id)
    assert all(np.mean(v) >= 0.99 for v in ious.values()), {k: np.round(v, 3) for k, v in ious.items()}
    assert len(ious[4]) == FRAMES - CLICKED and metric(server, "seglabel_track_sessions") == 0


async def _status(c, requests) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in c.track(iter(requests)):
            pass
    return err.value


async def test_track_bad_input_is_a_clear_status(make_server, tuned, photo_bytes):
    _, repo, frames = tuned
    server = await make_server(repo=repo, pipeline=None)
    f0 = (frames / "00000.jpg").read_bytes()
    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}") as c:
        cases = {
            "no open": ([track_frame(0, f0)], grpc.StatusCode.INVALID_ARGUMENT, "opens the session"),
            "not an image": ([track_open(), track_frame(0, b"nope")], grpc.StatusCode.INVALID_ARGUMENT, "image"),
            "size changes": ([track_open(), track_frame(0, f0, [track_prompt(1, [(5, 5, True)])]),
                              track_frame(1, photo_bytes)], grpc.StatusCode.INVALID_ARGUMENT, "this session's frames"),
            "backwards": ([track_open(), track_frame(3, f0), track_frame(2, f0)], grpc.StatusCode.INVALID_ARGUMENT,
                          "frames go forward"),
            "off the frame": ([track_open(), track_frame(0, f0, [track_prompt(1, [(500, 5, True)])])],
                              grpc.StatusCode.INVALID_ARGUMENT, "outside the 96x72 frame"),
            "clicks before any frame": ([track_open(), track_clicks(0, [track_prompt(1, [(5, 5, True)])])],
                                        grpc.StatusCode.INVALID_ARGUMENT, "no frame was answered yet"),
            "clicks on another frame": ([track_open(), track_frame(0, f0, PROMPTS[0]),
                                         track_clicks(1, [track_prompt(1, [(5, 5, True)])])],
                                        grpc.StatusCode.INVALID_ARGUMENT, "prompts the frame last answered (0)"),
            "nothing to do": ([track_open(), track_frame(0, f0, PROMPTS[0]), track_clicks(0)],
                              grpc.StatusCode.INVALID_ARGUMENT, "nothing to do"),
            "unknown object removed": ([track_open(), track_frame(0, f0, remove=[7])], grpc.StatusCode.NOT_FOUND,
                                       "no object 7"),
            "too many objects": ([track_open(), track_frame(0, f0, [track_prompt(k, [(5, 5, True)]) for k in range(33)])],
                                 grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 32 objects"),
        }  # fmt: skip
        for name, (requests, code, text) in cases.items():
            err = await _status(c, requests)
            assert err.code() == code and text in err.details(), (name, err.code(), err.details())
        # the server is unharmed and holds no session
        replies = [r async for r in c.track(iter([track_open(), track_frame(0, f0, PROMPTS[0])]))]
        assert len(replies) == 1 and len(replies[0].objects) == 2
    assert metric(server, "seglabel_track_sessions") == 0


async def test_track_session_idle_past_its_limit_is_ended_and_freed(make_server, tuned):
    _, repo, frames = tuned
    from seglabel_server.pipeline.config import PipelineConfig

    server = await make_server(repo=repo, pipeline=PipelineConfig(track_idle_s=0.5))
    f0 = (frames / "00000.jpg").read_bytes()

    async def slow():
        yield track_open()
        yield track_frame(0, f0, PROMPTS[0])
        await asyncio.sleep(3)
        yield track_frame(1, f0)

    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}") as c:
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for r in c.track(slow()):
                got.append(r)
    assert len(got) == 1 and err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no frame for 0.5 s" in err.value.details()
    assert (
        metric(server, "seglabel_track_sessions") == 0
        and metric(server, "seglabel_track_sessions_expired_total") == 1
    )


def _mp4(path, n: int = FRAMES) -> None:
    """The test's moving shapes as an H.264 MP4 (PyAV), as a user's video."""
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(60, 120, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:H, :W]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for t in range(n):
            f = base.copy()
            f[10 + t // 3 : 30 + t // 3, 8 + t : 34 + t] = (220, 40, 40)
            f[(yy - 44 - t // 2) ** 2 + (xx - 62) ** 2 < 81] = (40, 60, 230)
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


async def test_seglabel_track_writes_files_their_readers_read_and_resumes(make_server, tuned, tmp_path):
    import av
    import motmetrics
    from pycocotools import mask as mu
    from seglabel_client.cli import main

    _, repo, _ = tuned
    server = await make_server(repo=repo)
    video, out = tmp_path / "clip.mp4", tmp_path / "out"
    _mp4(video)
    argv = ["--server", f"127.0.0.1:{server.port}", "track", str(video), "--out", str(out), "--quiet",
            "--box", "0:8,10,34,30", "--point", "0:62,44", "--point", f"{LATER}:50,20", "--labels", "red box,blue disc"]  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 0
    ytvis = json.loads((out / "tracks.ytvis.json").read_text())
    assert ytvis["videos"][0]["length"] == FRAMES and (
        ytvis["videos"][0]["width"],
        ytvis["videos"][0]["height"],
    ) == (W, H)
    anns = {a["id"]: a for a in ytvis["annotations"]}
    names = {c["id"]: c["name"] for c in ytvis["categories"]}
    assert set(names.values()) <= {"red box", "blue disc"}  # each track's category is its label
    assert all(names[a["category_id"]] in ("red box", "blue disc") for a in ytvis["annotations"])
    assert sorted(anns) == [1, 2, 3] and all(len(a["segmentations"]) == FRAMES for a in anns.values())
    assert all(s is None for s in anns[3]["segmentations"][:LATER])  # object 3 starts on its frame
    present = 0
    for a in anns.values():
        for seg, box, area in zip(a["segmentations"], a["bboxes"], a["areas"]):
            if seg is not None:
                m = mu.decode({"size": seg["size"], "counts": seg["counts"].encode()})
                assert m.shape == (H, W) and m.sum() == area and list(mu.toBbox(mu.encode(m))) == box
                present += 1
    assert present > 0
    mot = motmetrics.io.loadtxt(str(out / "tracks.mot.txt"), fmt="mot15-2D")
    assert len(mot) == present and set(mot.index.get_level_values("Id")) <= {1, 2, 3}
    acc = motmetrics.MOTAccumulator(auto_id=True)  # the tracks against themselves: perfect scores
    for _, rows in mot.groupby(level="FrameId"):
        ids, boxes = rows.index.get_level_values("Id").tolist(), rows[["X", "Y", "Width", "Height"]].values
        # (motmetrics 1.4's iou_matrix calls np.asfarray, gone in numpy 2: the same distance here)
        x0, y0 = boxes[:, None, :2], boxes[None, :, :2]
        x1, y1 = x0 + boxes[:, None, 2:], y0 + boxes[None, :, 2:]
        inter = np.clip(np.minimum(x1, y1) - np.maximum(x0, y0), 0, None).prod(-1)
        area = boxes[:, 2] * boxes[:, 3]
        dist = 1 - inter / (area[:, None] + area[None] - inter)
        acc.update(ids, ids, np.where(dist > 0.5, np.nan, dist))
    summary = motmetrics.metrics.create().compute(acc, metrics=["mota", "num_switches"])
    assert summary["mota"].iloc[0] == 1.0 and summary["num_switches"].iloc[0] == 0
    with av.open(str(out / "overlay.mp4")) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == FRAMES and decoded[0].shape == (H, W, 3)

    # killed after 5 frames: the same command continues and gives the same files
    files = {n: (out / n).read_bytes() for n in ("tracks.ytvis.json", "tracks.mot.txt")}
    journal = out / "track.journal.jsonl"
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:6]))
    for n in files:
        (out / n).unlink()
    assert await asyncio.to_thread(main, argv) == 0
    assert {n: (out / n).read_bytes() for n in files} == files
    assert len(journal.read_text().splitlines()) == 1 + FRAMES


async def test_seglabel_track_detects_new_objects_and_refuses_a_bad_video(
    make_server, tuned, tmp_path, capsys
):
    from seglabel_client.cli import main

    _, repo, _ = tuned
    server = await make_server(repo=repo)
    video, out = tmp_path / "clip.mp4", tmp_path / "out"
    _mp4(video, 9)
    target = ["--server", f"127.0.0.1:{server.port}", "track"]
    argv = [*target, str(video), "--out", str(out), "--quiet", "--detect-every", "4", "--format", "mot",
            "--grid", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--max-masks", "3"]  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 0
    records = [json.loads(x) for x in (out / "track.journal.jsonl").read_text().splitlines()[1:]]
    started = {r["frame"]: [o["id"] for o in r["objects"] if o["detected"]] for r in records}
    started = {t: ids for t, ids in started.items() if ids}
    assert started and set(started) <= {0, 4, 8} and 0 in started
    ids = [i for v in started.values() for i in v]
    assert len(ids) == len(set(ids))  # each detection a new object
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    assert (
        await asyncio.to_thread(main, [*target, str(bad), "--out", str(tmp_path / "o2"), "--point", "0:5,5"])
        == 2
    )
    assert "not a video" in capsys.readouterr().err


async def test_live_mode_drops_stale_frames_and_a_cancel_frees_the_session(make_server, tuned):
    _, repo, frames = tuned
    server = await make_server(repo=repo)
    f = [(frames / f"{t:05d}.jpg").read_bytes() for t in range(FRAMES)]
    # a camera faster than the server: every frame sent at once; the first with prompts
    requests = [track_open("live")] + [
        track_frame(t, f[t % FRAMES], PROMPTS[0] if t == 0 else ()) for t in range(24)
    ]
    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}") as c:
        replies = [r async for r in c.track(iter(requests))]
        answered = [r.frame_index for r in replies]
        dropped = [i for r in replies for i in r.dropped_frames]
        assert answered[0] == 0 and answered[-1] == 23 and answered == sorted(answered)
        assert dropped and sorted(answered + dropped) == list(range(24))
        assert all(len(r.objects) == 2 for r in replies)

        # a client that cancels mid-video: the session ends and its state is freed
        async def slow():
            yield track_open()
            for t in range(FRAMES):
                yield track_frame(t, f[t], PROMPTS.get(t, ()))
                await asyncio.sleep(0.05)

        call = c.stub.Track(slow())
        got = 0
        async for _ in call:
            got += 1
            if got == 2:
                call.cancel()
                break
    for _ in range(100):
        if metric(server, "seglabel_track_sessions") == 0:
            break
        await asyncio.sleep(0.05)
    assert metric(server, "seglabel_track_sessions") == 0 and server.service.tracking.sessions == 0


async def test_tracks_get_labels_that_settle_on_their_mean_embedding(make_server, tuned, tiny_repo_no_clip):
    _, repo, frames = tuned
    server = await make_server(repo=repo)
    vocab = ["red box", "blue disc", "green square"]
    opening = track_open("file")
    opening.open.vocabulary.extend(vocab)
    opening.open.label_every = 3
    requests = [opening] + [
        track_frame(t, (frames / f"{t:05d}.jpg").read_bytes(), PROMPTS.get(t, ())) for t in range(FRAMES)
    ]
    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}") as c:
        replies = [r async for r in c.track(iter(requests))]
    seen: dict[int, str] = {}
    labelled_once: set[int] = set()
    for r in replies:
        assert r.timings.clip_ms >= 0
        for o in r.objects:
            if o.area and (o.prompted or r.frame_index % 3 == 0):
                labelled_once.add(o.object_id)
            assert o.HasField("label") == (o.object_id in labelled_once), (r.frame_index, o.object_id)
            if o.HasField("label"):
                assert o.label.label in vocab and 0 <= o.label.confidence <= 1 and len(o.label.top_k) == 3
                assert o.label_changed == (o.object_id in seen and seen[o.object_id] != o.label.label)
                seen[o.object_id] = o.label.label
    assert labelled_once == {1, 2, 3}

    # labels asked of a server without CLIP: a clear status, before any frame is read
    bare = await make_server(repo=tiny_repo_no_clip)
    async with AsyncSegmenterClient(f"127.0.0.1:{bare.port}") as c:
        err = await _status(c, [opening, requests[1]])
    assert (
        err.code() == grpc.StatusCode.FAILED_PRECONDITION
        and "labelling tracks is not available" in err.details()
    )


async def test_an_http_tracking_session_answers_frame_by_frame(make_server, tuned, photo_bytes):
    """The web page's road: a session opened with POST /track, one multipart call per frame, the
    answer as the TrackResponse's JSON; a bad frame's status; DELETE ends it."""
    import requests

    from tests.system import free_port

    _, repo, frames = tuned
    port = free_port()
    server = await make_server(repo=repo, http_port=port)
    base = f"http://127.0.0.1:{port}"

    def session() -> list:
        sid = requests.post(
            f"{base}/track", json={"vocabulary": ["red box", "blue disc"], "label_every": 2}
        ).json()["session"]
        answers = []
        for t in range(4):
            req = {
                "frame_index": t,
                "prompts": [{"object_id": 1, "box": {"x0": 8, "y0": 10, "x1": 34, "y1": 30}}]
                if t == 0
                else [],
            }
            r = requests.post(f"{base}/track/{sid}/frames", files={"image": (frames / f"{t:05d}.jpg").read_bytes()},
                              data={"request": json.dumps(req)})  # fmt: skip
            assert r.status_code == 200, r.text
            answers.append(r.json())
        bad = requests.post(
            f"{base}/track/{sid}/frames", files={"image": photo_bytes}, data={"request": '{"frame_index": 9}'}
        )
        gone = requests.post(f"{base}/track/{sid}/frames", files={"image": b"x"}, data={"request": "{}"})
        sid2 = requests.post(f"{base}/track", json={}).json()["session"]
        deleted = requests.delete(f"{base}/track/{sid2}")
        after = requests.post(f"{base}/track/{sid2}/frames", files={"image": b"x"}, data={"request": "{}"})
        return answers, bad, gone, deleted, after

    answers, bad, gone, deleted, after = await asyncio.to_thread(session)
    assert [a["frame_index"] for a in answers] == [0, 1, 2, 3]
    for a in answers:
        (o,) = a["objects"]
        assert o["object_id"] == 1 and o["rle"]["size"] == [H, W] and a["width"] == W
        assert o["label"] is None or o["label"]["label"] in ("red box", "blue disc")
    assert answers[-1]["objects"][0]["label"] is not None  # (absent on frame 0, labelled on frame 2)
    assert bad.status_code == 400 and "this session's frames are 96x72" in bad.json()["error"]["message"]
    assert gone.status_code == 404  # the session ended with its error
    assert deleted.status_code == 200 and after.status_code == 404
    for _ in range(100):
        if metric(server, "seglabel_track_sessions") == 0:
            break
        await asyncio.sleep(0.05)
    assert metric(server, "seglabel_track_sessions") == 0


async def test_detect_starts_objects_for_masks_no_track_covers(make_server, tuned):
    from seglabel_api.options import SegmentOptions

    _, repo, frames = tuned
    server = await make_server(repo=repo)
    grid = SegmentOptions(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, max_masks=4)
    f = [(frames / f"{t:05d}.jpg").read_bytes() for t in range(4)]
    requests = [track_open("file", detect_options=grid), track_frame(0, f[0], detect=True), track_frame(1, f[1]),
                track_frame(2, f[2], detect=True), track_frame(3, f[3])]  # fmt: skip
    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}") as c:
        replies = [r async for r in c.track(iter(requests))]
    first = [o for o in replies[0].objects]
    assert first and all(o.detected and o.prompted for o in first)
    assert [o.object_id for o in first] == list(
        range(10000, 10000 + len(first))
    )  # ids from first_detected_id
    assert [o.object_id for o in replies[1].objects] == [o.object_id for o in first]  # then tracked
    assert not any(o.detected for o in replies[1].objects)
    later = [o for o in replies[2].objects if o.detected]
    ids = [o.object_id for o in replies[2].objects]
    assert len(ids) == len(set(ids)) and all(o.object_id >= 10000 + len(first) for o in later)
    assert len(replies[3].objects) == len(replies[2].objects)
