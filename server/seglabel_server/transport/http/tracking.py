"""Tracking sessions over HTTP: the ``Track`` stream held open in this process, fed one frame per
call (the web page's video tab and camera). A session is opened with the stream's options, each
frame is a multipart call answered with that frame's objects, and the session ends when deleted,
when it waits past ``track_idle_s`` for a frame, or on its first error (which that call returns).
A browser's live camera drops frames on its side: it sends the newest frame once the previous
answer is back.

    POST   /track                   JSON: TrackOpen's fields (mode, num_frames, vocabulary, ...)
                                    -> {"session": id, "idle_s": ...}
    POST   /track/{id}/frames       multipart ``image`` (the frame, encoded) and ``request`` (JSON:
                                    TrackRequest's frame fields: frame_index, prompts, remove,
                                    detect); without ``image``: prompts on the frame last
                                    answered (a paused video's clicks, TrackRequest's rules)
                                    -> the TrackResponse as JSON
    DELETE /track/{id}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

from fastapi import Request
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb

from seglabel_server.errors import InvalidArgument, NotFound
from seglabel_server.transport.grpc import convert
from seglabel_server.transport.http import json as wire
from seglabel_server.types import RequestContext

_END = object()


class _Session:
    """One Track stream fed from HTTP calls: ``frames_in`` is the stream's input, ``start`` pumps
    its answers to the calls waiting for them."""

    def __init__(self):
        self.frames: asyncio.Queue = asyncio.Queue(maxsize=1)
        self.answers: asyncio.Queue = asyncio.Queue()
        self.lock = asyncio.Lock()
        self.ended: str = ""
        self.task: asyncio.Task  # set by start

    def start(self, answers) -> None:
        self.task = asyncio.create_task(self._pump(answers))

    async def frames_in(self):
        while (frame := await self.frames.get()) is not _END:
            yield frame

    async def _pump(self, answers) -> None:
        try:
            async with contextlib.aclosing(answers) as it:
                async for answer in it:
                    await self.answers.put(answer)
        except Exception as exc:  # the session's failure: the waiting call returns it
            self.ended = str(exc)
            await self.answers.put(exc)
        else:
            self.ended = "closed"
            await self.answers.put(_END)


class TrackSessions:
    def __init__(self, gateway):
        self.gateway = gateway
        self.sessions: dict[str, _Session] = {}

    def _get(self, sid: str) -> _Session:
        s = self.sessions.get(sid)
        if s is None:
            raise NotFound(f"no tracking session {sid[:64]!r}: it ended, expired or never existed")
        return s

    async def open(self, body: dict, ctx: RequestContext) -> str:
        for sid in [k for k, s in self.sessions.items() if s.task.done()]:
            del self.sessions[sid]  # ended (expired, failed) without being deleted
        options = convert.track_options_from_pb(pb.TrackRequest(open=wire.parse(body, pb.TrackOpen())))
        options.mode = "file"  # one answer per call: a browser skips frames itself
        session = _Session()
        session.start(await self.gateway.track(options, session.frames_in(), ctx))
        sid = uuid.uuid4().hex
        self.sessions[sid] = session
        return sid

    async def frame(self, sid: str, image: bytes, request: dict) -> dict:
        s = self._get(sid)
        async with s.lock:
            if s.task.done():
                self.sessions.pop(sid, None)
                raise NotFound(f"tracking session {sid[:64]!r} ended: {s.ended}")
            req = wire.parse(request, pb.TrackRequest())
            req.image = image
            await s.frames.put(convert.track_frame_from_pb(req))
            answer = await s.answers.get()
        if answer is _END or isinstance(answer, Exception):
            self.sessions.pop(sid, None)
            if isinstance(answer, Exception):
                raise answer
            raise NotFound(f"tracking session {sid[:64]!r} ended")
        return wire.message_json(convert.track_answer_to_pb(answer))

    async def close(self, sid: str) -> None:
        s = self.sessions.pop(sid, None)
        if s is None:
            raise NotFound(f"no tracking session {sid[:64]!r}")
        await self.stop(s)

    @staticmethod
    async def stop(s: _Session) -> None:
        if not s.task.done():
            s.task.cancel()
        await asyncio.gather(s.task, return_exceptions=True)

    async def close_all(self) -> None:
        for s in list(self.sessions.values()):
            await self.stop(s)
        self.sessions.clear()


def add_routes(app, gateway, request_context) -> TrackSessions:
    sessions = TrackSessions(gateway)
    app.router.on_shutdown.append(sessions.close_all)

    @app.post("/track")
    async def track_open(request: Request):
        body = await request.json() if await request.body() else {}
        if not isinstance(body, dict):
            raise InvalidArgument("the body is a JSON object of the session's options")
        sid = await sessions.open(body, request_context(request))
        return {"session": sid}

    @app.post("/track/{sid}/frames")
    async def track_frame(sid: str, request: Request):
        form = await request.form()
        part = form.get("image")
        if part is not None and not hasattr(part, "read"):
            raise InvalidArgument("multipart field 'image' is the frame, a file")
        image = await part.read() if part is not None else b""  # none: clicks on the frame last answered
        try:
            fields = json.loads(str(form.get("request") or "{}"))
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"field 'request' is not JSON ({exc.msg})") from None
        return await sessions.frame(sid, image, fields)

    @app.delete("/track/{sid}")
    async def track_close(sid: str):
        await sessions.close(sid)
        return {"deleted": sid}

    return sessions
