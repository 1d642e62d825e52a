"""A Label Studio ML backend served by seglabel itself, under ``/label-studio`` of the HTTP gateway
(and of the Ray Serve ingress, which serves the same app). In Label Studio: Project settings ->
Model -> Connect model, URL ``http://<host>:<http port>/label-studio`` (with the server's token as
the basic-auth password when it has one). The routes follow ``label_studio_ml/api.py``:

    GET  /health, /          {"status": "UP", "model_class": "seglabel"}
    POST /setup              {"project", "schema", "hostname", "access_token", "extra_params"} -> {"model_version"}
    POST /predict            {"tasks", "project", "label_config", "params": {"context"}} -> {"results", "model_version"}
    POST /webhook            Label Studio's webhooks: annotations become examples (``learn.py``)
    POST /train              {"annotations": tasks with annotations, "project", "label_config"}: the same, for all
    GET  /status             the backend's progress: tasks predicted, in the background, posted, failed
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from seglabel_server.errors import InvalidArgument
from seglabel_server.transport.http.gateway import Gateway
from seglabel_server.transport.http.labelstudio.backend import LabelStudioBackend, Settings
from seglabel_server.transport.http.labelstudio.learn import FORGET_EVENTS, LEARN_EVENTS, learn

PREFIX = "/label-studio"
log = logging.getLogger(__name__)
__all__ = ["PREFIX", "Settings", "LabelStudioBackend", "router"]


def settings_of(cfg, environ) -> Settings:
    """The backend's settings from the server's config, the environment filling what it leaves empty
    (read once, at start-up)."""
    key = ""
    if cfg.label_studio_api_key_file:
        with open(cfg.label_studio_api_key_file) as f:
            key = f.read().strip()
    return Settings(
        url=cfg.label_studio_url or environ.get("LABEL_STUDIO_URL", ""),
        api_key=key or environ.get("LABEL_STUDIO_API_KEY", ""),
        predict_seconds=cfg.label_studio_predict_s,
    )


async def _body(request: Request) -> dict:
    """The JSON object a call sends, parsed as it is (predictions hold megabytes of brush RLE:
    FastAPI's model validation of them costs more than the segmentation)."""
    try:
        body = orjson.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the body must be a JSON object")
    return body


async def _json(obj, status: int = 200) -> Response:
    """Written by orjson, off the event loop: 4 MB of brush RLE take 5 ms (FastAPI's encoder: 0.5 s)."""
    data = await asyncio.to_thread(orjson.dumps, obj)
    return Response(data, status_code=status, media_type="application/json")


def router(gateway: Gateway, settings: Settings) -> tuple[APIRouter, LabelStudioBackend]:
    backend = LabelStudioBackend(gateway, settings)
    r = APIRouter(prefix=PREFIX, tags=["label-studio"])
    jobs: set[asyncio.Task] = set()

    def later(coro, what: str) -> None:
        async def run():
            try:
                done = await coro
                log.info("label studio %s: %s", what, done)
            except Exception as exc:  # logged: Label Studio has long stopped waiting
                log.warning("label studio %s failed: %s", what, exc)

        job = asyncio.get_running_loop().create_task(run())
        jobs.add(job)
        job.add_done_callback(jobs.discard)

    @r.get("/")
    @r.get("/health")
    async def health():
        ready = await gateway.serving()
        return JSONResponse(
            {"status": "UP" if ready else "DOWN", "model_class": "seglabel"}, 200 if ready else 503
        )

    @r.get("/metrics")
    async def metrics():
        return {}

    @r.get("/status")
    async def status():
        return {**backend.status(), "learning": len(jobs)}

    @r.post("/setup")
    async def setup(request: Request):
        return await backend.setup(await _body(request))

    @r.post("/predict")
    async def predict(request: Request):
        return await _json(await backend.predict(await _body(request)))

    @r.post("/webhook")
    async def webhook(request: Request):
        body = await _body(request)
        action = body.get("action")
        if action not in (*LEARN_EVENTS, *FORGET_EVENTS):
            return JSONResponse({"status": "Unknown event", "action": str(action)[:64]}, 200)
        await backend.known(body.get("project"))  # a malformed or unknown project answers now
        if action in LEARN_EVENTS and not isinstance(body.get("annotation"), dict):
            raise InvalidArgument(f"{action} without its 'annotation'")
        later(learn(backend, body), f"{action} {(body.get('annotation') or {}).get('id', '')}")
        return JSONResponse({"status": "accepted", "action": action}, 201)

    @r.post("/train")
    async def train(request: Request):
        body = await _body(request)
        tasks = body.get("annotations")
        if not isinstance(tasks, list) or not tasks:
            raise InvalidArgument("'annotations' must be a non-empty list of tasks with their annotations")
        project = {"id": backend.project(body.get("project")).id, "label_config": body.get("label_config")}
        n = 0
        for task in tasks:
            for ann in (task.get("annotations") or []) if isinstance(task, dict) else []:
                later(learn(backend, {"action": "ANNOTATION_UPDATED", "annotation": ann, "task": task,
                                      "project": project}), f"train annotation {ann.get('id')}")  # fmt: skip
                n += 1
        return JSONResponse({"status": "accepted", "annotations": n}, 201)

    return r, backend
