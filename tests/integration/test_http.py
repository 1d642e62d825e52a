"""The HTTP/JSON gateway on a live server: the seed application's way of calling it (``requests``
with multipart uploads and JSON bodies), its error codes, Server-Sent Events, OpenAPI, the token."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections import defaultdict

import pytest
import requests
from PIL import Image
from seglabel_client import sample_image_bytes

from tests.integration.conftest import in_flight
from tests.system import free_port

LOOSE = {"pred_iou_thresh": 0, "stability_score_thresh": 0, "box_nms_thresh": 1}


@pytest.fixture
def gateway(make_server, scene_repo):
    """A server on the scene repository with the HTTP gateway on a free port; returns its base URL."""

    async def make(**overrides):
        port = free_port()
        await make_server(repo=scene_repo, http_port=port, **overrides)
        return f"http://127.0.0.1:{port}"

    return make


def seed_session(base: str, image_path) -> dict:
    """The seed application's documented client usage, as its users wrote it."""
    out = {}
    # Upload an image
    with open(image_path, "rb") as f:
        response = requests.post(f"{base}/upload", files={"image": f})
    file_id = response.json()["file_id"]
    # Segment it
    response = requests.post(f"{base}/segment", json={"file_id": file_id, "prompt_type": "grid"})
    result = response.json()
    printed = []
    for label in result["labels"]:
        printed.append(f"Mask {label['mask_index']}: {label['label']} ({label['confidence']:.2f})")

    def analyze_segments(result):
        by_label = defaultdict(list)
        for label in result["labels"]:
            by_label[label["label"]].append(label["confidence"])
        return {k: {"count": len(v), "best": max(v)} for k, v in by_label.items()}

    # Depth and text for the same upload
    depth = requests.get(f"{base}/depth/{file_id}").json()
    text = requests.post(f"{base}/extract_text/{file_id}").json()["text"]
    out.update(file_id=file_id, result=result, printed=printed, depth=depth, text=text)
    out["analysis"] = analyze_segments(result)
    loose = requests.post(f"{base}/segment", json={"file_id": file_id, "prompt_type": "grid", "points_per_side": 4,
                                                   "max_masks": 5, **LOOSE}).json()  # fmt: skip
    out["loose"], out["loose_analysis"] = loose, analyze_segments(loose)
    return out


def png_of(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


async def test_the_seed_clients_snippets_work_unchanged(gateway, tmp_path):
    base = await gateway()
    path = tmp_path / "coffee.jpg"
    path.write_bytes(sample_image_bytes("coffee.jpg"))
    s = await asyncio.to_thread(seed_session, base, path)
    r = s["result"]
    assert len(s["file_id"]) == 64 and r["success"] is True and r["mask_count"] == len(r["labels"])
    assert png_of(r["segmented_image"]).size == (600, 400)
    loose = s["loose"]
    assert loose["mask_count"] == 5 and len(loose["labels"]) == 5 and len(loose["masks"]) == 5
    assert {"label", "confidence", "mask_index", "top_k"} <= set(loose["labels"][0])
    assert {"size", "counts"} == set(loose["masks"][0]["rle"]) and loose["masks"][0]["rle"]["size"] == [
        400,
        600,
    ]
    assert sum(v["count"] for v in s["loose_analysis"].values()) == 5
    assert png_of(loose["segmented_image"]).size == (600, 400)
    d = s["depth"]
    assert (d["width"], d["height"]) == (600, 400) and png_of(d["depth_image"]).size == (600, 400)
    assert len(base64.b64decode(d["data"])) == 600 * 400 * 2 and d["max"] >= d["min"]
    assert isinstance(s["text"], str)


async def test_errors_are_statuses_with_a_json_body(gateway):
    base = await gateway(max_image_bytes=1 << 20)

    def calls():
        return [
            requests.post(f"{base}/segment", json={"file_id": "0" * 64}),
            requests.post(f"{base}/segment", json={"file_id": "not-a-sha"}),
            requests.post(f"{base}/upload", files={"image": ("x.png", b"not an image at all")}),
            requests.post(f"{base}/upload", files={"image": ("big.png", b"\0" * (3 << 20))}),
            requests.post(f"{base}/segment", data="{not json", headers={"content-type": "application/json"}),
            requests.post(f"{base}/segment", json={"file_id": "0" * 64, "prompt_type": "lasso"}),
            requests.get(f"{base}/depth/{'1' * 64}"),
        ]

    got = await asyncio.to_thread(calls)
    assert [r.status_code for r in got] == [404, 400, 400, 413, 400, 400, 404]
    for r in got:
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        assert "Traceback" not in r.text and "/work/" not in r.text


async def test_stream_carries_the_grpc_events_and_openapi_lists_every_route(gateway):
    base = await gateway()

    def run():
        with requests.post(
            f"{base}/segment/stream",
            json={
                "image": base64.b64encode(sample_image_bytes("astronaut.jpg")).decode(),
                "points_per_side": 4,
                "max_masks": 3,
                "return_overlay": False,
                "with_depth": True,
                **LOOSE,
            },  # fmt: skip
            stream=True,
        ) as r:
            events, name = [], None
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
        return r.status_code, r.headers["content-type"], events, requests.get(f"{base}/openapi.json").json()

    status, ctype, events, openapi = await asyncio.to_thread(run)
    names = [n for n, _ in events]
    assert status == 200 and ctype.startswith("text/event-stream")
    assert names[0] == "accepted" and names[-1] == "summary" and "masks" in names and "label_update" in names
    assert names.index("depth") > max(i for i, n in enumerate(names) if n == "masks")
    assert sum(len(d["masks"]) for n, d in events if n == "masks") == 3
    assert set(openapi["paths"]) == {
        "/", "/upload", "/segment", "/segment/stream", "/depth/{file_id}", "/extract_text/{file_id}", "/info", "/healthz",
        "/datasets", "/datasets/{job_id}", "/datasets/{job_id}/images", "/datasets/{job_id}/annotations.coco.json",
        "/label-studio/", "/label-studio/health", "/label-studio/metrics", "/label-studio/status",
        "/label-studio/setup", "/label-studio/predict", "/label-studio/webhook", "/label-studio/train",
        "/datasets/{job_id}/dataset.zip", "/vocabularies", "/vocabularies/{name}", "/vocabularies/{name}/examples",
        "/vocabularies/{name}/examples/remove", "/relabel", "/track", "/track/{sid}/frames", "/track/{sid}",
    }  # fmt: skip


async def test_the_gateway_asks_for_the_same_token(gateway, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    base = await gateway(auth_token_file=str(tmp_path / "token"))

    def calls():
        return (
            requests.get(f"{base}/healthz").status_code,
            requests.get(f"{base}/info").status_code,
            requests.get(f"{base}/info", headers={"authorization": "Bearer wrong"}).status_code,
            requests.get(f"{base}/info", headers={"authorization": "Bearer s3cret"}).status_code,
        )

    assert await asyncio.to_thread(calls) == (200, 401, 401, 200)


async def test_a_client_that_goes_away_cancels_its_unary_request(make_server, scene_repo, photo):
    """A unary POST /segment whose client disconnects stops its work (counted 499, leaves the
    in-flight count) instead of running to the end for nobody; the metric proves which happened,
    since a request that ran to the end would be counted 200."""
    port = free_port()
    server = await make_server(repo=scene_repo, http_port=port, cpu_threads=2)
    base, metrics = f"http://127.0.0.1:{port}", server.service.metrics
    buf = io.BytesIO()
    Image.fromarray(photo).resize((2000, 2000)).save(buf, format="JPEG", quality=90)  # seconds of work
    heavy = {"image": base64.b64encode(buf.getvalue()).decode(), "points_per_side": 32, "max_masks": 1000,
             "skip_labels": True, "return_overlay": False, **LOOSE}  # fmt: skip

    def give_up():
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(f"{base}/segment", json=heavy, timeout=(5, 0.5))

    await asyncio.to_thread(give_up)
    for _ in range(300):
        if metrics.value("seglabel_http_requests_total", route="/segment", status="499") == 1:
            break
        await asyncio.sleep(0.05)
    assert metrics.value("seglabel_http_requests_total", route="/segment", status="499") == 1
    assert metrics.value("seglabel_http_requests_total", route="/segment", status="200") == 0
    for _ in range(100):
        if in_flight(server) == 0:
            break
        await asyncio.sleep(0.05)
    assert in_flight(server) == 0
    # and the server answers the next request normally
    ok = await asyncio.to_thread(requests.get, f"{base}/depth/{'0' * 64}")
    assert ok.status_code == 404
    assert metrics.value("seglabel_http_requests_total", route="/depth/{file_id}", status="404") == 1
