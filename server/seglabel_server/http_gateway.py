"""HTTP/JSON gateway (FastAPI) in the server process: the seed application's routes on the same
service object as gRPC (no second pipeline, no gRPC hop).

    POST /upload                    multipart field ``image`` -> {"file_id", "width", "height", "filename"}
    POST /segment                   JSON {"file_id" | "image" (base64), "prompt_type": "grid", ...}
                                    -> {"success", "segmented_image": "data:image/png;base64,...",
                                        "mask_count", "labels": [{"label", "confidence", "mask_index", "top_k"}],
                                        "masks" (COCO RLE), "timings", ...}
    POST /segment/stream            the same body; Server-Sent Events carrying StreamSegment's events
    GET  /depth/{file_id}           relative depth: coloured PNG (data URL), 16-bit codes, min/max
    POST /extract_text/{file_id}    {"text": full text, "lines": [...]}
    GET  /info, GET /healthz
    GET  /                          the web page (static files shipped in the package, under /static)

Errors: the domain's error kinds mapped once to HTTP statuses with ``{"error": {"code", "message"}}``;
request bodies are counted while they arrive and refused with 413 past the image limit.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.routing import Match

from seglabel_server.errors import (
    Cancelled,
    ErrorKind,
    InvalidArgument,
    LimitExceeded,
    SeglabelError,
    error_kind,
)
from seglabel_server.types import (
    Accepted,
    DepthReady,
    DepthResult,
    Done,
    LabelsUpdate,
    MasksReady,
    Progress,
    RequestContext,
    SegmentParams,
    SegmentResult,
    TextOptions,
    TextReady,
    TextResult,
)

WEB = Path(__file__).with_name("web")
PUBLIC = ("/healthz", "/")  # no token needed: health and the page (with its files under /static/)

HTTP_STATUS = {
    ErrorKind.INVALID: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.OVER_LIMIT: 429,  # a full server or queue; a request over a size limit is 413
    ErrorKind.CANCELLED: 499,
    ErrorKind.INTERNAL: 500,
    ErrorKind.NOT_SERVED: 501,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.DEADLINE: 504,
}


def error_response(exc: BaseException) -> JSONResponse:
    kind, message = error_kind(exc)
    status = 413 if isinstance(exc, LimitExceeded) else HTTP_STATUS[kind]
    if kind == ErrorKind.INTERNAL and not isinstance(exc, SeglabelError):
        message = f"internal error ({type(exc).__name__})"  # never a stack trace or server paths
    return JSONResponse({"error": {"code": kind.value, "message": message}}, status_code=status)


# ----------------------------------------------------------------------------------------- bodies
class PointIn(BaseModel):
    x: float
    y: float
    positive: bool = True


class BoxIn(BaseModel):
    x0: float
    y0: float
    x1: float
    y1: float


class TextOptionsIn(BaseModel):
    box_thresh: float | None = None
    min_confidence: float | None = None


class SegmentBody(BaseModel):
    """As the seed's ``/segment``, plus the gRPC request's options (0 / absent: server default)."""

    file_id: str | None = None
    image: str | None = Field(None, description="base64 of the encoded image, instead of file_id")
    prompt_type: Literal["grid", "points", "box"] = "grid"
    points_per_side: int = 0
    points: list[PointIn] = []
    boxes: list[BoxIn] = []
    max_masks: int = 0
    vocabulary: list[str] = []
    top_k: int = 0
    min_confidence: float | None = None
    return_overlay: bool = True
    skip_labels: bool = False
    multimask: bool = False
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    box_nms_thresh: float | None = None
    with_depth: bool = False
    with_text: bool = False
    text_options: TextOptionsIn = TextOptionsIn()

    def params(self) -> SegmentParams:
        return SegmentParams(
            prompt_type=self.prompt_type,
            points_per_side=self.points_per_side,
            points=[(p.x, p.y, 1 if p.positive else 0) for p in self.points],
            boxes=[(b.x0, b.y0, b.x1, b.y1) for b in self.boxes],
            max_masks=self.max_masks,
            vocabulary=tuple(self.vocabulary),
            top_k=self.top_k,
            min_confidence=self.min_confidence,
            return_overlay=self.return_overlay,
            skip_labels=self.skip_labels,
            multimask=self.multimask,
            pred_iou_thresh=self.pred_iou_thresh,
            stability_score_thresh=self.stability_score_thresh,
            box_nms_thresh=self.box_nms_thresh,
            with_depth=self.with_depth,
            with_text=self.with_text,
            text_options=TextOptions(self.text_options.box_thresh, self.text_options.min_confidence),
        )

    def image_bytes(self) -> bytes | None:
        if self.image is None:
            return None
        try:
            return base64.b64decode(self.image.split(",", 1)[-1], validate=True)
        except ValueError as exc:
            raise InvalidArgument("image must be base64 (optionally a data: URL)") from exc


# ------------------------------------------------------------------------------------- answers
def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else ""


def mask_json(m) -> dict:
    return {
        "index": m.index,
        "rle": {"size": list(m.rle["size"]), "counts": m.rle["counts"]},
        "bbox": list(m.bbox),
        "area": m.area,
        "predicted_iou": m.predicted_iou,
        "stability_score": m.stability_score,
        "point": list(m.point) if m.point is not None else None,
    }


def label_json(lab) -> dict:
    return {
        "label": lab.label,
        "confidence": lab.confidence,
        "mask_index": lab.mask_index,
        "top_k": [{"label": n, "confidence": c} for n, c in lab.top_k],
    }


def depth_json(d: DepthResult) -> dict:
    h, w = d.values.shape
    return {
        "width": w,
        "height": h,
        "min": d.min,
        "max": d.max,
        "depth_image": _data_url(d.colorized_png),
        "data": base64.b64encode(d.codes.astype("<u2").tobytes()).decode("ascii"),
        "encoding": "uint16 little-endian, row-major; value = min + q * ((max - min) / 65535); "
        "relative inverse depth (larger is nearer)",
    }


def text_json(t: TextResult) -> dict:
    return {
        "text": t.full_text,
        "lines": [
            {"text": ln.text, "confidence": ln.confidence, "box": [list(p) for p in ln.box]} for ln in t.lines
        ],
    }


def result_json(r: SegmentResult, include_masks: bool = True) -> dict:
    out = {
        "success": r.complete,
        "segmented_image": _data_url(r.overlay_png),
        "mask_count": len(r.masks),
        "labels": [label_json(lab) for lab in r.labels],
        "timings": {f"{k}_ms": v for k, v in r.timings.items()},
        "width": r.width,
        "height": r.height,
        "labels_unavailable_reason": r.labels_unavailable_reason,
        "depth_unavailable_reason": r.depth_unavailable_reason,
        "text_unavailable_reason": r.text_unavailable_reason,
    }
    if include_masks:
        out["masks"] = [mask_json(m) for m in r.masks]
        if r.depth is not None:
            out["depth"] = depth_json(r.depth)
            out["mask_depth"] = [vars(d) for d in r.mask_depth]
        if r.text is not None:
            out["text"] = text_json(r.text)
            out["mask_text"] = [vars(t) for t in r.mask_text]
    return out


def event_json(ev) -> tuple[str, dict]:
    if isinstance(ev, Accepted):
        return "accepted", {"request_id": ev.request_id, "width": ev.width, "height": ev.height}
    if isinstance(ev, Progress):
        return "progress", {"stage": ev.stage, "fraction": ev.fraction}
    if isinstance(ev, MasksReady):
        return "masks", {"masks": [mask_json(m) for m in ev.masks]}
    if isinstance(ev, LabelsUpdate):
        return "label_update", {
            "labels": [label_json(lab) for lab in ev.labels],
            "done": ev.done,
            "total": ev.total,
        }
    if isinstance(ev, DepthReady):
        return "depth", {"depth": depth_json(ev.depth), "mask_depth": [vars(d) for d in ev.mask_depth]}
    if isinstance(ev, TextReady):
        return "text", {"text": text_json(ev.text), "mask_text": [vars(t) for t in ev.mask_text]}
    if isinstance(ev, Done):
        return "summary", result_json(ev.result, include_masks=False)
    raise TypeError(f"unknown event {type(ev).__name__}")


# ----------------------------------------------------------------------------------------- app
class BodyLimit:
    """ASGI middleware: a request body longer than ``limit`` bytes is refused with 413 as soon as
    it passes the limit (Content-Length first, then the bytes as they arrive); the app then reads
    the body it was given."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = LimitExceeded(f"request body over the limit of {self.limit} bytes")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await error_response(too_big)(scope, receive, send)
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                return await error_response(too_big)(scope, receive, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, given = b"".join(chunks), False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the client to disconnect

        await self.app(scope, replay, send)


async def until_disconnected(request: Request, ctx: RequestContext, work, poll_s: float = 0.2):
    """Await ``work`` (a service call on ``ctx``); if the HTTP client goes away first, cancel the
    request's work (queued batches, CPU stages) as a cancelled gRPC call does. ``ctx`` is cancelled
    when this returns either way (it owns nothing after the answer)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise Cancelled("the HTTP client disconnected")
    finally:
        ctx.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class HttpMetrics:
    """ASGI middleware: counts every answered request by its route's template (file ids folded)
    and status in ``seglabel_http_requests``."""

    def __init__(self, app, fastapi_app: FastAPI, metrics):
        self.app, self.routes, self.metrics = app, fastapi_app.routes, metrics

    def route(self, scope) -> str:
        for r in self.routes:
            if r.matches(scope)[0] == Match.FULL:
                return getattr(r, "path", scope["path"])
        return "(unrouted)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [0]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.http_requests.labels(self.route(scope), str(status[0] or 499)).inc()


def create_app(service, token: str | None = None) -> FastAPI:
    app = FastAPI(
        title="seglabel",
        description="SAM2.1 segmentation + CLIP labels, depth and OCR over HTTP/JSON (the gRPC API's twin).",
        version=service.info()["version"],
    )

    @app.exception_handler(SeglabelError)
    async def _domain(request: Request, exc: SeglabelError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
            for e in exc.errors()[:5]
        )
        return JSONResponse({"error": {"code": "invalid", "message": f"malformed request: {problems}"}}, 400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return error_response(exc)

    if token:

        @app.middleware("http")
        async def _auth(request: Request, call_next):
            path = request.url.path
            if not (path in PUBLIC or path.startswith("/static/")):
                sent = request.headers.get("authorization", "")
                if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                    return JSONResponse(
                        {"error": {"code": "unauthenticated", "message": "missing or wrong bearer token"}},
                        401,
                    )
            return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        """The web page: upload, grid segmentation with streamed labels, click to segment, COCO JSON."""
        return FileResponse(WEB / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB), name="static")

    @app.get("/healthz")
    async def healthz():
        ready = service.ready.is_set() and not service.draining
        return JSONResponse({"status": "SERVING" if ready else "NOT_SERVING"}, 200 if ready else 503)

    @app.get("/info")
    async def info():
        return service.info()

    @app.post("/upload")
    async def upload(request: Request):
        form = await request.form()
        image = form.get("image")
        if image is None or not hasattr(image, "read"):
            raise InvalidArgument("multipart field 'image' (a file) is required")
        data = await image.read()
        filename = form.get("filename") or getattr(image, "filename", "") or ""
        file_id, w, h = await asyncio.to_thread(service.upload, data, str(filename))
        return {"file_id": file_id, "width": w, "height": h, "filename": str(filename)}

    @app.post("/segment")
    async def segment(body: SegmentBody, request: Request):
        ctx = RequestContext()
        params, data = body.params(), body.image_bytes()
        result = await until_disconnected(request, ctx, service.segment(params, body.file_id, data, ctx))
        return result_json(result)

    @app.post("/segment/stream")
    async def segment_stream(body: SegmentBody):
        """Server-Sent Events: ``event: accepted|progress|masks|label_update|depth|text|summary|error``,
        ``data:`` the event as JSON, in StreamSegment's order."""
        params, data = body.params(), body.image_bytes()
        ctx = RequestContext()
        events: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(service.segment(params, body.file_id, data, ctx, events.put))
        task.add_done_callback(lambda _: events.put_nowait(None))

        async def stream():
            try:
                while True:
                    ev = await events.get()
                    if ev is None:
                        break
                    name, payload = event_json(ev)
                    yield f"event: {name}\ndata: {json.dumps(payload)}\n\n"
                    if isinstance(ev, Done):
                        break
                if task.done() and not task.cancelled() and task.exception() is not None:
                    kind, message = error_kind(task.exception())
                    yield f"event: error\ndata: {json.dumps({'code': kind.value, 'message': message})}\n\n"
            finally:
                ctx.cancel()  # the client went away or the stream ended: stop the work
                if not task.done():
                    task.cancel()

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/depth/{file_id}")
    async def depth(file_id: str, request: Request):
        ctx = RequestContext()
        result, timings = await until_disconnected(request, ctx, service.estimate_depth(file_id, None, ctx))
        return {**depth_json(result), "timings": {f"{k}_ms": v for k, v in timings.items()}}

    @app.post("/extract_text/{file_id}")
    async def extract_text(file_id: str, request: Request, options: TextOptionsIn | None = None):
        ctx = RequestContext()
        o = options or TextOptionsIn()
        work = service.extract_text(file_id, None, TextOptions(o.box_thresh, o.min_confidence), ctx)
        result, (w, h), timings = await until_disconnected(request, ctx, work)
        return {
            **text_json(result),
            "width": w,
            "height": h,
            "timings": {f"{k}_ms": v for k, v in timings.items()},
        }

    limited = BodyLimit(app, service.cfg.max_image_bytes * 4 // 3 + (1 << 20))
    return HttpMetrics(limited, app, service.metrics), app
