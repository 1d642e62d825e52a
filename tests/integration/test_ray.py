"""The service on Ray Serve: a real local Ray cluster (2 CPUs), 2 replicas of 1 CPU each, uploads in
Redis, called through Ray's gRPC proxy with the project's unchanged client and through Ray's HTTP
proxy with the original application's ``requests`` snippets; a replica killed in the middle of a
run, under gRPC and under HTTP."""

from __future__ import annotations

import base64
import collections
import io
import os
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from PIL import Image
from seglabel_client import sample_image_bytes
from seglabel_client.client import AsyncSegmenterClient, SegmenterClient, build_request, relabel_request
from seglabel_server.storage.uploads import RedisStore

from tests.system import free_port, need, output_dir

from .test_http import seed_session

pytestmark = pytest.mark.slow  # a local Ray cluster

LOOSE = dict(pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1)
REQUEST = dict(points_per_side=4, max_masks=6, labels=["person", "rocket", "flag", "sky"], **LOOSE)
REQUEST_HTTP = dict(points_per_side=4, max_masks=6, vocabulary=["person", "rocket", "flag", "sky"], **LOOSE)


def replica_pids() -> list[int]:
    """Processes of the pipeline's replicas (Ray names them ``ray::ServeReplica:<app>:<deployment>``)."""
    pids = []
    for f in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = f.read_bytes().split(b"\0")[0].decode(errors="replace").strip()
        except OSError:
            continue
        if title == "ray::ServeReplica:seglabel:Seglabel":
            pids.append(int(f.parent.name))
    return pids


@pytest.fixture(scope="module")
def ray_ports(scene_repo, redis_url):
    """(gRPC target, HTTP base URL) of one local Ray Serve application: 2 replicas on the scene
    repository (SAM2, CLIP, depth, OCR), uploads in Redis."""
    try:
        import ray
        from ray import serve
        from seglabel_server.transport.ray import app as ray_app
    except ImportError as exc:
        need("ray", f"ray[serve] is not installed ({exc}); pip install 'seglabel[ray]'")
    port, http_port = free_port(), free_port()
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 << 20, logging_level="WARNING")
    try:
        args = {
            "server": {"models": str(scene_repo), "upload_store": redis_url},
            "num_replicas": 2,
            "num_cpus": 1,
        }
        ray_app.start(args, grpc_port=port, http_port=http_port)
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_serve(ray_ports) -> str:
    return ray_ports[0]


@pytest.fixture(scope="module")
def ray_http(ray_ports) -> str:
    return ray_ports[1]


def serve_logs() -> str:
    """The text of this Ray session's Serve logs (replicas, ingress, proxies)."""
    root = Path("/tmp/ray/session_latest/logs/serve")
    return "".join(f.read_text(errors="replace") for f in sorted(root.glob("*.log"))) if root.is_dir() else ""


def wait_for_replicas(n: int = 2, timeout: float = 120.0) -> list[int]:
    for _ in range(int(timeout * 2)):
        pids = replica_pids()
        if len(pids) == n:
            return pids
        time.sleep(0.5)
    raise AssertionError(f"{n} replicas never ran: {replica_pids()}")


def segment_with_replica(c: SegmenterClient, file_id: str):
    resp, call = c.stub.Segment.with_call(
        build_request(None, file_id=file_id, **REQUEST), metadata=c.metadata
    )
    return resp, dict(call.trailing_metadata())["seglabel-replica"]


def signature(resp):
    return [m.rle.counts for m in resp.masks], [(lab.mask_index, lab.label) for lab in resp.labels]


async def test_two_replicas_share_uploads_and_answer_as_one_process(
    ray_serve, make_server, scene_repo, photo_bytes
):
    with SegmenterClient(ray_serve) as uploader:
        uploader.wait_ready(timeout=60)
        info = uploader.server_info()
        file_id = uploader.upload(photo_bytes, filename="astronaut.jpg").file_id
    assert "redis" in info.upload_store and info.served_by
    served, answers = set(), []
    with SegmenterClient(ray_serve) as other:  # another connection
        for _ in range(30):
            resp, replica = segment_with_replica(other, file_id)
            served.add(replica)
            answers.append(signature(resp))
            if len(served) == 2:
                break
        streamed = [ev.WhichOneof("event") for ev in other.stream_segment(file_id=file_id, **REQUEST)]
    assert len(served) == 2, served  # both replicas answered for the one upload
    single = await make_server(repo=scene_repo)
    async with AsyncSegmenterClient(f"127.0.0.1:{single.port}") as c:
        reference = signature(await c.segment(photo_bytes, **REQUEST))
    assert len(reference[0]) == 6 and all(a == reference for a in answers)
    assert streamed[0] == "accepted" and streamed[-1] == "summary" and "label_update" in streamed


def test_the_http_routes_and_the_page_through_rays_http_proxy(ray_http, ray_serve, tmp_path):
    """The original application's snippets, unchanged, against Ray's HTTP proxy; the web page,
    health, the SSE stream; a domain error answered with its status and logged as one line, no
    traceback, over HTTP and gRPC alike."""
    image = tmp_path / "astronaut.jpg"
    image.write_bytes(sample_image_bytes("astronaut.jpg"))
    out = seed_session(ray_http, image)
    assert len(out["file_id"]) == 64 and out["result"]["success"]
    assert len(out["printed"]) == len(out["result"]["labels"]) == out["result"]["mask_count"]
    assert out["depth"]["depth_image"].startswith("data:image/png;base64,") and isinstance(out["text"], str)
    assert out["loose"]["mask_count"] == 5 and sum(v["count"] for v in out["loose_analysis"].values()) == 5
    page = requests.get(f"{ray_http}/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert requests.get(f"{ray_http}/static/app.js").status_code == 200
    assert requests.get(f"{ray_http}/healthz").json() == {"status": "SERVING"}
    assert requests.get(f"{ray_http}/info").json()["served_by"]
    with requests.post(f"{ray_http}/segment/stream", json={"file_id": out["file_id"], "points_per_side": 4,
                       "max_masks": 3, "return_overlay": False, **LOOSE}, stream=True) as r:  # fmt: skip
        names = [line[7:] for line in r.iter_lines(decode_unicode=True) if line.startswith("event: ")]
    assert names[0] == "accepted" and names[-1] == "summary" and "masks" in names
    # the Label Studio backend, on the ingress like every route, its vocabulary in the replicas' store
    config = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
              '<Label value="person"/><Label value="rocket"/></BrushLabels></View>')  # fmt: skip
    extra = {"points_per_side": 4, "max_masks": 3, **LOOSE}
    setup = requests.post(
        f"{ray_http}/label-studio/setup", json={"project": "5.1", "schema": config, "extra_params": extra}
    )
    assert setup.status_code == 200 and setup.json()["model_version"].endswith("label-studio-5-r1")
    task = {
        "id": 1,
        "data": {"image": "data:image/jpeg;base64," + base64.b64encode(image.read_bytes()).decode()},
    }
    got = requests.post(
        f"{ray_http}/label-studio/predict", json={"project": "5.1", "label_config": config, "tasks": [task]}
    )
    regions = got.json()["results"][0]["result"]
    assert regions and {r["type"] for r in regions} == {"brushlabels"}
    missing = "0" * 64
    r = requests.post(f"{ray_http}/segment", json={"file_id": missing})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    with SegmenterClient(ray_serve) as c, pytest.raises(grpc.RpcError) as err:
        c.segment(file_id=missing)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    time.sleep(1.0)  # Ray writes its logs asynchronously
    logs = serve_logs()
    lines = [line for line in logs.splitlines() if missing[:16] in line or "NOT_FOUND" in line]
    assert any("NOT_FOUND" in line and "request" in line for line in lines), lines[-5:]
    assert "UnknownFile" not in logs and "Traceback" not in logs, logs[-3000:]


def variant(i: int) -> bytes:
    img = np.asarray(Image.open(io.BytesIO(sample_image_bytes("coffee.jpg"))).convert("RGB")).copy()
    img[0, 0] = (i, 255 - i, i // 2)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_a_replica_killed_mid_run_loses_no_request_and_comes_back(ray_serve, redis_url):
    """50 requests (upload + segment by file_id) from 8 clients; one replica is SIGKILLed once
    requests are flowing. Each request succeeds (a lost replica's calls are retried on the other) or
    fails UNAVAILABLE; none hangs; every upload can still be read; Ray starts a new replica, which
    serves again."""
    before = replica_pids()
    assert len(before) == 2
    todo, lock = list(range(50)), threading.Lock()
    outcomes: collections.Counter = collections.Counter()
    uploaded, replicas_seen, done = {}, set(), threading.Event()

    def client():
        with SegmenterClient(ray_serve, timeout=120) as c:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                try:
                    fid = c.upload(variant(i)).file_id
                    with lock:
                        uploaded[i] = fid
                    _, replica = segment_with_replica(c, fid)
                    outcome = "ok"
                    with lock:
                        replicas_seen.add(replica)
                except grpc.RpcError as exc:
                    outcome = exc.code().name
                with lock:
                    outcomes[outcome] += 1
                    if sum(outcomes.values()) >= 6:
                        done.set()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    assert done.wait(120)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic() - t0
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "a request hung"
    report = (f"replica {victim} SIGKILLed at {killed_at:.1f}s; outcomes {dict(outcomes)} "
              f"in {time.monotonic() - t0:.1f}s; replicas that answered: {len(replicas_seen)}")  # fmt: skip
    print("\n" + report)
    (output_dir("ray") / "fault.txt").write_text(report + "\n")
    assert sum(outcomes.values()) == 50 and set(outcomes) <= {"OK", "ok", "UNAVAILABLE"}, outcomes
    assert outcomes["ok"] >= 40

    # no upload lost: every upload answered during the run is in the store, and segments
    store = RedisStore(redis_url, ttl_s=3600)
    assert len(uploaded) >= outcomes["ok"] and all(
        store.get(fid) == variant(i) for i, fid in uploaded.items()
    )
    with SegmenterClient(ray_serve, timeout=120) as c:
        for fid in list(uploaded.values())[::10]:
            segment_with_replica(c, fid)

    # Ray replaces the replica; the new one serves
    for _ in range(120):
        now = replica_pids()
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.5)
    assert len(now) == 2 and victim not in now, now
    (replacement,) = set(now) - set(before)
    answered = set()
    with SegmenterClient(ray_serve, timeout=120) as c:
        c.wait_ready(timeout=60)
        fid = c.upload(variant(99)).file_id
        for _ in range(40):
            answered.add(segment_with_replica(c, fid)[1].rsplit(":", 1)[1])
            if str(replacement) in answered:
                break
    assert str(replacement) in answered and str(victim) not in answered, (replacement, answered)


def test_http_loses_no_request_when_a_replica_is_killed(ray_http):
    """30 uploads + segments over HTTP from 6 clients; one replica SIGKILLed once requests flow.
    Each request succeeds (a lost replica's calls are retried on the other) or is answered 503
    with Retry-After; none hangs, none gets a 500."""
    before = wait_for_replicas(2)
    todo, lock = list(range(100, 130)), threading.Lock()
    outcomes: collections.Counter = collections.Counter()
    done = threading.Event()

    def client():
        with requests.Session() as http:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                up = http.post(f"{ray_http}/upload", files={"image": ("v.png", variant(i))}, timeout=120)
                if up.status_code == 200:
                    r = http.post(f"{ray_http}/segment", json={"file_id": up.json()["file_id"], **REQUEST_HTTP},
                                  timeout=120)  # fmt: skip
                    outcome = r.status_code
                    if outcome == 200:
                        assert r.json()["mask_count"] == 6
                else:
                    outcome = up.status_code
                if outcome == 503:
                    assert "Retry-After" in (r if up.status_code == 200 else up).headers
                with lock:
                    outcomes[outcome] += 1
                    if sum(outcomes.values()) >= 4:
                        done.set()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    assert done.wait(120)
    os.kill(before[0], signal.SIGKILL)
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "a request hung"
    report = f"HTTP: replica {before[0]} SIGKILLed; outcomes {dict(outcomes)} in {time.monotonic() - t0:.1f}s"
    print("\n" + report)
    (output_dir("ray") / "fault-http.txt").write_text(report + "\n")
    assert sum(outcomes.values()) == 30 and set(outcomes) <= {200, 503}, outcomes
    assert outcomes[200] >= 24


def test_vocabularies_and_relabel_on_both_replicas(ray_serve, ray_http, photo_bytes):
    """A vocabulary taught through one replica labels on the other (the Redis store), and a
    Relabel finds its answer whichever replica takes it (answers are mirrored in Redis); the HTTP
    routes reach them through Ray's HTTP proxy."""
    from seglabel_client.client import example

    with SegmenterClient(ray_serve) as c:
        fid = c.upload(photo_bytes).file_id
        c.create_vocabulary("ray-vocab", ["cat", "dog"], replace=True, alpha=100)
        first, replica = None, None
        for _ in range(20):
            resp, call = c.stub.Segment.with_call(
                build_request(None, file_id=fid, vocabulary_name="ray-vocab", **{**REQUEST, "labels": ()}),
                metadata=c.metadata,
            )
            first, replica = first or resp, replica or dict(call.trailing_metadata())["seglabel-replica"]
            if dict(call.trailing_metadata())["seglabel-replica"] != replica:
                break
        c.add_examples("ray-vocab", "part-7731", [example(request_id=first.request_id, mask_index=0)])
        seen, labels = set(), []
        # (a replica killed by the tests before this one may still be starting again, its kernels
        # compiling at warm-up: ask until both have answered, for up to 90 s)
        give_up = time.monotonic() + 90
        while len(seen) < 2 and time.monotonic() < give_up:
            resp, call = c.stub.Relabel.with_call(
                relabel_request(first.request_id, vocabulary_name="ray-vocab"),
                metadata=c.metadata,
            )
            seen.add(dict(call.trailing_metadata())["seglabel-replica"])
            labels.append([(lab.label, lab.confidence) for lab in resp.labels])
            if len(seen) < 2 and len(labels) % 10 == 0:
                time.sleep(1.0)
        assert len(seen) == 2 and all(x == labels[0] for x in labels) and labels[0][0][0] == "part-7731"
    listed = requests.get(f"{ray_http}/vocabularies").json()
    assert "ray-vocab" in [v["name"] for v in listed["vocabularies"]]
    again = requests.post(
        f"{ray_http}/relabel", json={"request_id": first.request_id, "vocabulary_name": "ray-vocab"}
    )
    assert again.status_code == 200 and again.json()["labels"][0]["label"] == "part-7731"
    assert requests.delete(f"{ray_http}/vocabularies/ray-vocab").json() == {"deleted": True}
