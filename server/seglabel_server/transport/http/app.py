"""HTTP/JSON gateway (FastAPI): the original application's routes over a :class:`Gateway`: in the
server process the same service object as gRPC (no second pipeline, no gRPC hop); on Ray Serve the
ingress deployment, which routes each call to a replica.

    POST /upload                    multipart field ``image`` -> {"file_id", "width", "height", "filename"}
    POST /segment                   JSON {"file_id" | "image" (base64), "prompt_type": "grid", ...}
                                    -> {"success", "segmented_image": "data:image/png;base64,...",
                                        "mask_count", "labels": [{"label", "confidence", "mask_index", "top_k"}],
                                        "masks" (COCO RLE), "timings", ...}
    POST /segment/stream            the same body; Server-Sent Events carrying StreamSegment's events
    GET  /depth/{file_id}           relative depth: coloured PNG (data URL), 16-bit codes, min/max
    POST /extract_text/{file_id}    {"text": full text, "lines": [...]}
    GET  /info, GET /healthz
    GET/POST /vocabularies, GET/DELETE /vocabularies/{name}, POST /vocabularies/{name}/examples,
    POST /vocabularies/{name}/examples/remove, POST /relabel
                                    named vocabularies, few-shot examples, relabelling (CreateVocabulary...)
    POST /datasets, ...             dataset jobs: many images in, COCO / YOLO-seg out (``datasets.py``)
    /label-studio/...               a Label Studio ML backend (``labelstudio/``)
    GET  /                          the web page (static files shipped in the package, under /static)

Bodies and answers are the gRPC messages' (``json.py``); errors are ``{"error": {"code", "message"}}``
with the status of their kind (``middleware.py``); the bearer token is the gRPC one.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Literal

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from seglabel_api import options
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb

from seglabel_server import __version__
from seglabel_server.errors import InvalidArgument, SeglabelError, Unauthenticated, error_kind
from seglabel_server.transport.auth import Tokens
from seglabel_server.transport.grpc import convert
from seglabel_server.transport.http import json as wire
from seglabel_server.transport.http import labelstudio, schema, tracking
from seglabel_server.transport.http.datasets import DatasetJobs
from seglabel_server.transport.http.gateway import Gateway
from seglabel_server.transport.http.middleware import (
    BodyLimit,
    HttpMetrics,
    error_response,
    multipart_image,
    request_context,
    until_disconnected,
)
from seglabel_server.transport.http.schema import TextOptionsIn
from seglabel_server.types import RequestContext, SegmentOptions

WEB = Path(__file__).with_name("web")
PUBLIC = (
    "/healthz",
    "/",
    "/favicon.ico",
)  # no token needed: health and the page (with its files under /static/)


class SegmentCall(BaseModel):
    """What every ``/segment`` body is (its fields are :func:`segment_body`'s)."""

    def call(self) -> tuple[SegmentOptions, str | None, bytes | None]:
        """(options, file_id, image bytes): what the service's segment call takes."""
        req = wire.segment_request(self.model_dump())
        return convert.params_from_pb(req), req.file_id or None, req.image or None


def segment_body() -> type[BaseModel]:
    """As the original ``/segment``, plus every option of a Segment request (0 / absent: the server's
    default); the overlay is rendered unless ``return_overlay`` is false."""
    return schema.options_model(
        "SegmentBody", options.SEGMENT, SegmentCall, defaults={"return_overlay": True},
        extra={"file_id": (str | None, None),
               "image": (str | None, Field(None, description="base64 of the encoded image, instead of file_id"))},
    )  # fmt: skip


def dataset_options() -> type[BaseModel]:
    """A dataset job's options: a ``/segment`` body's (grid prompts) and how masks are written."""
    return schema.options_model(
        "DatasetOptions", options.DATASET,
        extra={"mask_format": (Literal["rle", "polygon"], "rle"), "polygon_tolerance": (float, 1.0)},
    )  # fmt: skip


def create_app(
    service: Gateway, token: Tokens | None = None, label_studio: labelstudio.Settings | None = None
) -> tuple[HttpMetrics, FastAPI]:
    """(the ASGI app to serve: the routes inside their middleware, the FastAPI app itself)."""
    app = FastAPI(
        title="seglabel",
        description="SAM2.1 segmentation + CLIP labels, depth and OCR over HTTP/JSON (the gRPC API's twin).",
        version=__version__,
    )
    # The bodies' models are built here, from the options' declaration as it is now.
    segment_json = schema.body(segment_body())
    dataset_model = dataset_options()
    dataset_json = schema.body(dataset_model, optional=True)

    @app.exception_handler(SeglabelError)
    async def _domain(request: Request, exc: SeglabelError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
            for e in exc.errors()[:5]
        )
        return error_response(InvalidArgument(f"malformed request: {problems}"))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return error_response(exc)

    if token:

        @app.middleware("http")
        async def _auth(request: Request, call_next):
            path = request.url.path
            if not (path in PUBLIC or path.startswith("/static/")):
                sent = request.headers.get("authorization", "")
                try:  # Label Studio sends basic auth
                    request.state.ceiling = token.check(sent, basic=path.startswith(labelstudio.PREFIX))
                except Unauthenticated as exc:
                    return error_response(exc)
            return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        """The web page: upload, grid segmentation with streamed labels, click to segment, COCO JSON."""
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(WEB / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=WEB), name="static")

    @app.get("/healthz")
    async def healthz():
        ready = await service.serving()
        return JSONResponse({"status": "SERVING" if ready else "NOT_SERVING"}, 200 if ready else 503)

    @app.get("/info")
    async def info():
        return wire.message_json(convert.info_to_pb(await service.info()))

    @app.post("/upload")
    async def upload(request: Request):
        form, data, name = await multipart_image(request)
        filename = str(form.get("filename") or name)
        file_id, w, h = await service.upload(data, filename)
        return {"file_id": file_id, "width": w, "height": h, "filename": filename}

    @app.post("/segment")
    async def segment(request: Request, body: SegmentCall = segment_json):
        ctx = request_context(request)
        result = await until_disconnected(request, ctx, service.segment(*body.call(), ctx))
        return wire.message_json(convert.result_to_pb(result))

    @app.post("/segment/stream")
    async def segment_stream(request: Request, body: SegmentCall = segment_json):
        """Server-Sent Events: ``event: accepted|progress|masks|label_update|depth|text|summary|error``,
        ``data:`` the event as JSON, in StreamSegment's order."""
        events = service.segment_events(*body.call(), request_context(request))

        async def stream():
            async with contextlib.aclosing(events):  # the client went away: the request is cancelled
                try:
                    async for ev in events:
                        name, payload = wire.event_json(ev)
                        yield f"event: {name}\ndata: {json.dumps(payload)}\n\n"
                except Exception as exc:
                    kind, message = error_kind(exc)
                    yield f"event: error\ndata: {json.dumps({'code': kind.value, 'message': message})}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/depth/{file_id}")
    async def depth(file_id: str, request: Request):
        ctx = request_context(request)
        result, timings = await until_disconnected(request, ctx, service.estimate_depth(file_id, None, ctx))
        return wire.flat(convert.depth_response_to_pb(result, timings), "depth")

    @app.post("/extract_text/{file_id}")
    async def extract_text(file_id: str, request: Request, options: TextOptionsIn | None = None):
        ctx = request_context(request)
        opts = convert.text_options_from_pb(wire.text_options(options.model_dump() if options else None))
        result, (w, h), timings = await until_disconnected(
            request, ctx, service.extract_text(file_id, None, opts, ctx)
        )
        return wire.flat(convert.text_response_to_pb(result, w, h, timings), "text")

    # -- vocabularies and relabelling: bodies and answers are the gRPC messages' ----------------
    @app.get("/vocabularies")
    async def vocabularies_list():
        vocabs = await service.list_vocabularies()
        return wire.message_json(
            pb.ListVocabulariesResponse(vocabularies=[convert.vocabulary_summary_to_pb(v) for v in vocabs])
        )

    @app.post("/vocabularies")
    async def vocabulary_create(body: dict = Body(...)):
        """``{"name", "labels": ["cat", {"name", "prompts", "threshold"}], "replace", "alpha", "beta"}``."""
        req = wire.parse(body, pb.CreateVocabularyRequest())
        got = await service.create_vocabulary(
            req.name, convert.labels_in_from_pb(req.labels), req.replace, req.alpha, req.beta
        )
        return wire.message_json(convert.vocabulary_to_pb(*got))

    @app.get("/vocabularies/{name}")
    async def vocabulary_get(name: str):
        return wire.message_json(convert.vocabulary_to_pb(*await service.get_vocabulary(name)))

    @app.delete("/vocabularies/{name}")
    async def vocabulary_delete(name: str):
        return {"deleted": await service.delete_vocabulary(name)}

    @app.post("/vocabularies/{name}/examples")
    async def vocabulary_add(name: str, body: dict = Body(...)):
        """``{"label", "examples": [{"file_id", "box": {x0,y0,x1,y1}} | {"request_id", "mask_index"},
        "negative"...]}`` -> ``{"vocabulary", "example_ids"}``."""
        req = wire.parse({**body, "vocabulary": name}, pb.AddExamplesRequest())
        examples = [convert.example_from_pb(e) for e in req.examples]
        (vocab, thresholds), ids = await service.add_examples(name, req.label, examples)
        return wire.message_json(
            pb.AddExamplesResponse(vocabulary=convert.vocabulary_to_pb(vocab, thresholds), example_ids=ids)
        )

    @app.post("/vocabularies/{name}/examples/remove")
    async def vocabulary_remove(name: str, body: dict = Body(...)):
        """``{"label", "example_ids": [] (all), "remove_label": false}``."""
        req = wire.parse({**body, "vocabulary": name}, pb.RemoveExamplesRequest())
        got = await service.remove_examples(name, req.label, list(req.example_ids), req.remove_label)
        return wire.message_json(convert.vocabulary_to_pb(*got))

    @app.post("/relabel")
    async def relabel(body: dict = Body(...)):
        """``{"request_id", "vocabulary": [...] | "vocabulary_name", "label_mode", "top_k",
        "min_confidence", "thresholds"}``: a kept answer's masks scored again, in milliseconds."""
        req = wire.parse(body, pb.RelabelRequest())
        labels, mode, timings = await service.relabel(
            req.request_id, convert.relabel_params_from_pb(req), RequestContext()
        )
        return wire.message_json(convert.relabel_to_pb(req.request_id, labels, mode, timings))

    ls_routes, app.state.label_studio = labelstudio.router(service, label_studio or labelstudio.Settings())
    app.include_router(ls_routes)

    app.state.tracking = tracking.add_routes(app, service, request_context)

    jobs = DatasetJobs(service)
    app.state.datasets = jobs
    app.router.on_shutdown.append(jobs.close)

    @app.post("/datasets")
    async def dataset_create(request: Request, settings: BaseModel | None = dataset_json):
        """A dataset job: images added to it are labelled with these options (``/segment``'s,
        plus how masks are written), then downloaded as COCO JSON or a zip with COCO + YOLO-seg."""
        job = await jobs.create((settings or dataset_model()).model_dump(exclude_none=True),
                                request_context(request).ceiling)  # fmt: skip
        return job.status()

    @app.post("/datasets/{job_id}/images")
    async def dataset_add(job_id: str, request: Request):
        form, data, filename = await multipart_image(request)
        return await jobs.add(job_id, str(form.get("name") or filename), data)

    @app.get("/datasets/{job_id}")
    async def dataset_status(job_id: str):
        return jobs.get(job_id).status()

    @app.get("/datasets/{job_id}/annotations.coco.json")
    async def dataset_coco(job_id: str):
        return FileResponse(await jobs.coco(job_id), media_type="application/json",
                            filename="annotations.coco.json")  # fmt: skip

    @app.get("/datasets/{job_id}/dataset.zip")
    async def dataset_zip(job_id: str):
        data = await jobs.zip(job_id)
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="dataset.zip"'})  # fmt: skip

    @app.delete("/datasets/{job_id}")
    async def dataset_delete(job_id: str):
        jobs.get(job_id)
        jobs.delete(job_id)
        return {"deleted": job_id}

    limited = BodyLimit(app, service.max_image_bytes * 4 // 3 + (1 << 20))
    return HttpMetrics(limited, app, service.metrics), app
