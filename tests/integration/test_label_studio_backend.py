"""The Label Studio backend's edges without Label Studio (the real one is in
test_label_studio.py): a stand-in for its file server (``/data/upload/...`` behind a legacy token)
and its predictions API, bad input of every kind, the server's token as basic auth, and tasks
left to the background with no Label Studio to post them to."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from seglabel_client import sample_image_bytes

from tests.system import free_port

CONFIG = """<View><Image name="image" value="$image"/>
<PolygonLabels name="poly" toName="image"><Label value="person"/><Label value="rocket"/></PolygonLabels></View>"""
EXTRA = {
    "points_per_side": 4,
    "pred_iou_thresh": 0,
    "stability_score_thresh": 0,
    "box_nms_thresh": 1,
    "max_masks": 3,
}
PHOTO = sample_image_bytes("astronaut.jpg")


class StandIn(BaseHTTPRequestHandler):
    """Label Studio's upload route (a legacy token required) and POST /api/predictions/."""

    posted: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.headers.get("Authorization") != "Token team-key":
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(200 if self.path.startswith("/data/upload/") else 404)
        self.end_headers()
        if self.path.startswith("/data/upload/"):
            self.wfile.write(PHOTO)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StandIn.posted.append((self.path, self.headers.get("Authorization"), body))
        self.send_response(201)
        self.end_headers()
        self.wfile.write(b"{}")


@pytest.fixture
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StandIn.posted = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def post(url, body, **kw):  # the server shares this event loop: never block it
    return await asyncio.to_thread(requests.post, url, json=body, timeout=60, **kw)


async def get(url, **kw):
    return await asyncio.to_thread(requests.get, url, timeout=60, **kw)


async def test_polygons_from_the_teams_files_and_every_bad_input_answered(make_server, stand_in, tmp_path):
    key = tmp_path / "key"
    key.write_text("team-key")
    port = free_port()
    await make_server(http_port=port, label_studio_url=stand_in, label_studio_api_key_file=str(key))
    ls = f"http://127.0.0.1:{port}/label-studio"
    setup = await post(f"{ls}/setup", {"project": "7.1700000000", "schema": CONFIG, "extra_params": EXTRA})
    assert setup.status_code == 200 and setup.json()["model_version"].endswith("label-studio-7-r1")
    tasks = [{"id": 1, "data": {"image": "/data/upload/7/a.jpg"}}, {"id": 2, "data": {"image": "/data/missing.jpg"}},
             {"id": 3, "data": {"text": "no image"}}, "not a task"]  # fmt: skip
    got = await post(f"{ls}/predict", {"project": "7.1700000000", "label_config": CONFIG, "tasks": tasks})
    assert got.status_code == 200
    first, missing, no_image, malformed = got.json()["results"]
    assert first["result"] and {r["type"] for r in first["result"]} == {"polygonlabels"}
    for r in first["result"]:
        pts = r["value"]["points"]
        assert len(pts) >= 3 and all(0 <= x <= 100 and 0 <= y <= 100 for x, y in pts)
        assert r["value"]["polygonlabels"][0] in ("person", "rocket")
    assert "HTTP 404" in missing["error"] and "no image under data.image" in no_image["error"]
    assert "must be an object" in malformed["error"]

    # a rectangle drawn in interactive mode: a box prompt, answered as the config's polygons
    ctx = {"result": [{"type": "rectanglelabels", "to_name": "image", "original_width": 512, "original_height": 512,
                       "value": {"x": 20, "y": 15, "width": 60, "height": 70, "rectanglelabels": ["rocket"]}}]}  # fmt: skip
    got = await post(f"{ls}/predict", {"project": "7.1700000000", "label_config": CONFIG, "tasks": tasks[:1],
                                       "params": {"context": ctx}})  # fmt: skip
    (answer,) = got.json()["results"]
    assert answer["result"] and {r["value"]["polygonlabels"][0] for r in answer["result"]} == {"rocket"}
    assert 0 < answer["score"] <= 1 and all(r["type"] == "polygonlabels" for r in answer["result"])

    async def status_of(resp):
        return resp.status_code, resp.json().get("error", {}).get("message", "")

    # a labeling config with nothing seglabel fills: 400, and no vocabulary is made for it
    code, msg = await status_of(
        await post(f"{ls}/setup", {"project": "8.1", "schema": "<View><Text name='t' value='$t'/></View>"})
    )
    assert code == 400 and "no BrushLabels, PolygonLabels or RectangleLabels" in msg
    names = [v["name"] for v in (await get(f"http://127.0.0.1:{port}/vocabularies")).json()["vocabularies"]]
    assert "label-studio-8" not in names
    # a project pointed at a named vocabulary that lacks a config label
    await post(f"http://127.0.0.1:{port}/vocabularies", {"name": "shared", "labels": ["person"]})
    code, msg = await status_of(
        await post(
            f"{ls}/setup", {"project": "9.1", "schema": CONFIG, "extra_params": {"vocabulary": "shared"}}
        )
    )
    assert code == 400 and "'rocket' are not in vocabulary 'shared'" in msg
    code, msg = await status_of(
        await post(f"{ls}/setup", {"project": "10.1", "schema": CONFIG, "extra_params": {"grid_size": 3}})
    )
    assert code == 400 and "unknown option(s) grid_size" in msg
    # malformed payloads and an unknown project
    assert (
        await status_of(await post(f"{ls}/predict", {"project": "7.1", "label_config": CONFIG, "tasks": "x"}))
    )[0] == 400
    assert (
        await status_of(await post(f"{ls}/predict", {"project": "p", "label_config": CONFIG, "tasks": []}))
    )[0] == 400
    code, msg = await status_of(
        await post(f"{ls}/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 99}})
    )
    assert code == 404 and "project 99 is not connected" in msg
    code, msg = await status_of(
        await post(f"{ls}/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 7}})
    )
    assert code == 400 and "without its 'annotation'" in msg
    ignored = await post(f"{ls}/webhook", {"action": "PROJECT_UPDATED", "project": {"id": 7}})
    assert ignored.status_code == 200 and ignored.json()["status"] == "Unknown event"
    assert (await status_of(await post(f"{ls}/train", {"project": "7.1", "annotations": []})))[0] == 400
    # the vocabulary of project 7 holds the config's labels and nothing was learned from the bad calls
    v = (await get(f"http://127.0.0.1:{port}/vocabularies/label-studio-7")).json()
    assert [lab["label"]["name"] for lab in v["labels"]] == ["person", "rocket"] and v.get("revision", 1) == 1


async def test_the_servers_token_is_label_studios_basic_auth_password_and_late_tasks_wait_for_the_next_call(
    make_server, tmp_path
):
    token = tmp_path / "token"
    token.write_text("s3cret")
    port = free_port()
    await make_server(http_port=port, auth_token_file=str(token), label_studio_predict_s=0.001)
    ls = f"http://127.0.0.1:{port}/label-studio"
    assert (await get(f"{ls}/health")).status_code == 401
    assert (await get(f"{ls}/health", auth=("label-studio", "wrong"))).status_code == 401
    ok = await get(f"{ls}/health", auth=("label-studio", "s3cret"))
    assert ok.status_code == 200 and ok.json()["status"] == "UP"
    auth = ("any-user", "s3cret")
    image = "data:image/jpeg;base64," + base64.b64encode(PHOTO).decode()
    body = {"project": "4.1", "label_config": CONFIG.replace("PolygonLabels", "BrushLabels"),
            "tasks": [{"id": i, "data": {"image": image}} for i in range(3)]}  # fmt: skip
    setup = {"project": "4.1", "schema": body["label_config"], "extra_params": EXTRA}
    assert (await post(f"{ls}/setup", setup, auth=auth)).status_code == 200
    first = (await post(f"{ls}/predict", body, auth=auth)).json()["results"]
    assert all(
        "still running" in r.get("error", "") and "kept for the next request" in r["error"] for r in first
    )

    async def all_done():
        while True:
            status = (await get(f"{ls}/status", auth=auth)).json()
            if status["running"] == 0:
                return status
            await asyncio.sleep(0.2)

    status = await asyncio.wait_for(all_done(), 60)
    assert status["background"] == 3 and status["posted"] == 0  # no Label Studio URL to post to
    again = (await post(f"{ls}/predict", body, auth=auth)).json()["results"]
    assert all(r["result"] and r["result"][0]["type"] == "brushlabels" for r in again), again
