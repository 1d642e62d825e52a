"""Sync and asyncio clients over the generated stubs. Only the public gRPC API is used.

Every call is written once (:class:`Calls`): it builds its request and hands the stub's method to
``_unary`` or ``_stream``, which :class:`SegmenterClient` runs (blocking) and
:class:`AsyncSegmenterClient` returns as an awaitable (or an async iterator)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from seglabel_api import options as request_options
from seglabel_api.options import SegmentOptions
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb
from seglabel_api.pb.seglabel.v1 import seglabel_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
# gRPC's own retry policy: calls answered UNAVAILABLE (a replica starting, draining or gone) are
# tried again with exponential backoff, at most 4 attempts, honouring the server's
# grpc-retry-pushback-ms; throttled when more than about 1 in 10 calls fail (a bounded retry
# budget). A stream is retried only before its first event arrived (gRPC commits it then).
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "seglabel.v1.Segmenter"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
)
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", RETRY_SERVICE_CONFIG),
]

ImageLike = bytes | str | os.PathLike
TOKEN_ENV = "SEGLABEL_TOKEN"


def _open_channel(grpc_api, target: str, tls_ca: str | os.PathLike | None, token: str | None):
    """(channel from ``grpc_api``, i.e. ``grpc`` or ``grpc.aio``; call metadata). ``tls_ca``: PEM file
    of the CA that signed the server's certificate (TLS); ``token``: bearer token (default:
    $SEGLABEL_TOKEN)."""
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    if tls_ca:
        creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
        return grpc_api.secure_channel(target, creds, options=_CHANNEL_OPTIONS), metadata
    return grpc_api.insecure_channel(target, options=_CHANNEL_OPTIONS), metadata


def _image_bytes(image: ImageLike) -> bytes:
    return bytes(image) if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()


# -- requests ------------------------------------------------------------------------------------------
def build_request(
    image: ImageLike | None = None, *, file_id: str | None = None, options: SegmentOptions | None = None, **kw
) -> pb.SegmentRequest:
    """A SegmentRequest for ``image`` (bytes or a path) or an uploaded ``file_id``. Its options are
    ``options`` (a :class:`~seglabel_api.options.SegmentOptions`) with keyword arguments of the same
    names on top (``seglabel_api.options`` declares each; ``labels`` is ``vocabulary``, ``overlay``
    ``return_overlay``). ``points``: (x, y) or (x, y, positive); ``boxes``: (x0, y0, x1, y1), pixels;
    unset thresholds take the server's defaults. Unlike the bare message, the overlay is rendered
    unless ``overlay=False`` (or ``options`` says)."""
    if options is None and not {"overlay", "return_overlay"} & set(kw):
        kw["overlay"] = True
    opts = request_options.from_kwargs(request_options.SEGMENT, base=options, **kw)
    return _set_image(request_options.to_pb(opts, pb.SegmentRequest()), image, file_id)


def relabel_request(request_id: str, options: SegmentOptions | None = None, **kw) -> pb.RelabelRequest:
    """A RelabelRequest: the labelling options of ``seglabel_api.options`` (vocabulary / ``labels``,
    vocabulary_name, label_mode, top_k, min_confidence, thresholds)."""
    opts = request_options.from_kwargs(request_options.RELABEL, base=options, **kw)
    return request_options.to_pb(opts, pb.RelabelRequest(request_id=request_id), request_options.RELABEL)


def vocabulary_label(label) -> pb.VocabularyLabel:
    """A label of CreateVocabulary: a name, (name, prompts), or a dict with name, prompts, threshold."""
    if isinstance(label, str):
        return pb.VocabularyLabel(name=label)
    if isinstance(label, dict):
        return pb.VocabularyLabel(**label)
    name, prompts = label
    return pb.VocabularyLabel(name=name, prompts=list(prompts))


def example(file_id: str = "", *, box: Sequence[float] | None = None, mask: dict | None = None,
            request_id: str = "", mask_index: int = 0, negative: bool = False) -> pb.Example:  # fmt: skip
    """An example for AddExamples: an uploaded image (whole, a ``box`` (x0, y0, x1, y1) of it, or a
    ``mask`` {"size": [h, w], "counts": str} of it), or mask ``mask_index`` of the answer
    ``request_id``; ``negative``: crops like it score lower for the label."""
    out = pb.Example(file_id=file_id, request_id=request_id, mask_index=mask_index, negative=negative)
    if box is not None:
        out.box.CopyFrom(pb.Box(x0=box[0], y0=box[1], x1=box[2], y1=box[3]))
    if mask is not None:
        counts = mask["counts"]
        out.mask.CopyFrom(
            pb.RLE(size=list(mask["size"]), counts=counts.decode() if isinstance(counts, bytes) else counts)
        )
    return out


def text_options(box_thresh: float | None = None, min_confidence: float | None = None) -> pb.TextOptions:
    return pb.TextOptions(box_thresh=box_thresh, min_confidence=min_confidence)


def _set_image(req, image: ImageLike | None, file_id: str | None):
    if (image is None) == (file_id is None):
        raise ValueError("give exactly one of image or file_id")
    if image is not None:
        req.image = _image_bytes(image)
    else:
        req.file_id = file_id
    return req


def depth_request(image: ImageLike | None = None, *, file_id: str | None = None) -> pb.EstimateDepthRequest:
    return _set_image(pb.EstimateDepthRequest(), image, file_id)


def text_request(image: ImageLike | None = None, *, file_id: str | None = None, box_thresh: float | None = None,
                 min_confidence: float | None = None) -> pb.ExtractTextRequest:  # fmt: skip
    return _set_image(pb.ExtractTextRequest(options=text_options(box_thresh, min_confidence)), image, file_id)


def depth_array(depth: pb.DepthMap):
    """A DepthMap's values as a float32 numpy array [height, width] (relative inverse depth:
    larger is nearer), decoded as the proto documents."""
    import numpy as np

    q = np.frombuffer(depth.data, dtype="<u2").reshape(depth.height, depth.width)
    lo, hi = np.float32(depth.min), np.float32(depth.max)
    return lo + q.astype(np.float32) * np.float32((hi - lo) / np.float32(65535))


def _status_name(resp: health_pb2.HealthCheckResponse) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


# -- the calls, once ---------------------------------------------------------------------------------------
class Calls:
    """Every call of ``seglabel.v1.Segmenter`` (and the health check), written once for both clients.
    The sync client returns each answer, the async one an awaitable of it (streams: an iterator,
    an async iterator)."""

    _grpc: Any  # grpc or grpc.aio: the kind of channel

    def __init__(self, target: str = DEFAULT_TARGET, timeout: float | None = None,
                 tls_ca: str | os.PathLike | None = None, token: str | None = None):  # fmt: skip
        """``tls_ca``: PEM file of the CA that signed the server's certificate (TLS); ``token``: bearer
        token (default: $SEGLABEL_TOKEN)."""
        self.channel, self.metadata = _open_channel(self._grpc, target, tls_ca, token)
        self.stub = pb_grpc.SegmenterStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout

    def _unary(self, method, request, timeout: float | None = None, then: Callable | None = None) -> Any:
        raise NotImplementedError

    def _stream(self, method, request, timeout: float | None = None) -> Any:
        raise NotImplementedError

    def upload(self, image: ImageLike, filename: str = "") -> Any:
        """UploadResponse: the image's file_id (its sha256), size and name."""
        return self._unary(self.stub.Upload, pb.UploadRequest(image=_image_bytes(image), filename=filename))

    def segment(self, image: ImageLike | None = None, timeout: float | None = None, **kw) -> Any:
        """SegmentResponse; ``kw``: ``file_id`` and the options of :func:`build_request`."""
        return self._unary(self.stub.Segment, build_request(image, **kw), timeout)

    def stream_segment(self, image: ImageLike | None = None, timeout: float | None = None, **kw) -> Any:
        """SegmentEvents as the server sends them (:func:`seglabel_client.stream.merge` makes the
        SegmentResponse of them); leaving the loop early stops the server's work."""
        return self._stream(self.stub.StreamSegment, build_request(image, **kw), timeout)

    def estimate_depth(self, image: ImageLike | None = None, *, file_id: str | None = None,
                       timeout: float | None = None) -> Any:  # fmt: skip
        return self._unary(self.stub.EstimateDepth, depth_request(image, file_id=file_id), timeout)

    def extract_text(self, image: ImageLike | None = None, *, timeout: float | None = None, **kw) -> Any:
        """``kw``: ``file_id``, ``box_thresh``, ``min_confidence``."""
        return self._unary(self.stub.ExtractText, text_request(image, **kw), timeout)

    def server_info(self) -> Any:
        return self._unary(self.stub.GetServerInfo, pb.GetServerInfoRequest())

    def health(self, service: str = "") -> Any:
        """The health status' name: SERVING once the models are loaded and warm."""
        request = health_pb2.HealthCheckRequest(service=service)
        return self._unary(self.health_stub.Check, request, self.timeout or 5, then=_status_name)

    def create_vocabulary(self, name: str, labels, *, replace: bool = False, alpha: float = 0.0,
                          beta: float = 0.0) -> Any:  # fmt: skip
        """``labels``: names, (name, prompts) pairs, or dicts (name, prompts, threshold)."""
        request = pb.CreateVocabularyRequest(name=name, labels=[vocabulary_label(lab) for lab in labels],
                                             replace=replace, alpha=alpha, beta=beta)  # fmt: skip
        return self._unary(self.stub.CreateVocabulary, request)

    def get_vocabulary(self, name: str) -> Any:
        return self._unary(self.stub.GetVocabulary, pb.GetVocabularyRequest(name=name))

    def list_vocabularies(self) -> Any:
        return self._unary(self.stub.ListVocabularies, pb.ListVocabulariesRequest())

    def delete_vocabulary(self, name: str) -> Any:
        return self._unary(self.stub.DeleteVocabulary, pb.DeleteVocabularyRequest(name=name))

    def add_examples(self, vocabulary: str, label: str, examples: Iterable[pb.Example]) -> Any:
        """``examples``: :func:`example` messages."""
        request = pb.AddExamplesRequest(vocabulary=vocabulary, label=label, examples=list(examples))
        return self._unary(self.stub.AddExamples, request)

    def remove_examples(
        self, vocabulary: str, label: str, ids: Iterable[str] = (), remove_label: bool = False
    ) -> Any:
        request = pb.RemoveExamplesRequest(vocabulary=vocabulary, label=label, example_ids=list(ids),
                                           remove_label=remove_label)  # fmt: skip
        return self._unary(self.stub.RemoveExamples, request)

    def track(self, requests: Iterable[pb.TrackRequest] | AsyncIterator[pb.TrackRequest],
              timeout: float | None = None) -> Any:  # fmt: skip
        """TrackResponses, one per frame answered, for ``requests`` (``seglabel_client.track``:
        :func:`track_open` first, then :func:`track_frame` messages); the session ends with them."""
        return self._stream(self.stub.Track, requests, timeout)

    def relabel(self, request_id: str, **kw) -> Any:
        """A kept answer's masks scored again (no SAM2, no CLIP image tower); ``kw``: the labelling
        options of :func:`relabel_request`."""
        return self._unary(self.stub.Relabel, relabel_request(request_id, **kw))


class SegmenterClient(Calls):
    """Blocking client. ``with SegmenterClient("127.0.0.1:50051") as c: c.segment("photo.jpg")``."""

    _grpc = grpc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _unary(self, method, request, timeout=None, then=None):
        reply = method(request, timeout=timeout or self.timeout, metadata=self.metadata)
        return then(reply) if then is not None else reply

    def _stream(self, method, request, timeout=None):
        """The call itself: iterate it for the events, ``.cancel()`` it to stop the server's work."""
        return method(request, timeout=timeout or self.timeout, metadata=self.metadata)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until health says SERVING (models loaded and warm)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health() == "SERVING":
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not SERVING after {timeout}s")
            time.sleep(0.25)


class AsyncSegmenterClient(Calls):
    """asyncio client. ``async with AsyncSegmenterClient() as c: async for ev in c.stream_segment(...)``."""

    _grpc = grpc.aio

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def _unary(self, method, request, timeout=None, then=None):
        reply = await method(request, timeout=timeout or self.timeout, metadata=self.metadata)
        return then(reply) if then is not None else reply

    async def _stream(self, method, request, timeout=None) -> AsyncIterator:
        call = method(request, timeout=timeout or self.timeout, metadata=self.metadata)
        try:
            async for ev in call:
                yield ev
        finally:
            call.cancel()
