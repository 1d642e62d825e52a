"""Sync and asyncio clients over the generated stubs. Only the public gRPC API is used."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb
from seglabel_api.pb.seglabel.v1 import seglabel_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
_PROMPTS = {"grid": pb.PROMPT_TYPE_GRID, "points": pb.PROMPT_TYPE_POINTS, "box": pb.PROMPT_TYPE_BOX}
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
    return image if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()


def build_request(
    image: ImageLike | None = None,
    *,
    file_id: str | None = None,
    prompt_type: str = "grid",
    points_per_side: int = 0,
    points: Iterable[Sequence[float]] = (),
    boxes: Iterable[Sequence[float]] = (),
    labels: Iterable[str] = (),
    max_masks: int = 0,
    top_k: int = 0,
    min_confidence: float | None = None,
    overlay: bool = True,
    skip_labels: bool = False,
    multimask: bool = False,
    pred_iou_thresh: float | None = None,
    stability_score_thresh: float | None = None,
    box_nms_thresh: float | None = None,
    with_depth: bool = False,
    with_text: bool = False,
    text_box_thresh: float | None = None,
    text_min_confidence: float | None = None,
    vocabulary_name: str = "",
    label_mode: str = "single",
    thresholds: dict[str, float] | None = None,
) -> pb.SegmentRequest:
    """A SegmentRequest. ``points``: (x, y) or (x, y, positive); ``boxes``: (x0, y0, x1, y1), pixels.
    Thresholds left at None take the server's defaults. ``with_depth`` / ``with_text``: also the
    depth map with per-mask depth, and the text lines with the lines inside each mask.
    ``vocabulary_name``: a stored vocabulary instead of ``labels``; ``label_mode``: "single" or
    "multi" (every label above its threshold; ``thresholds`` override the vocabulary's)."""
    if prompt_type not in _PROMPTS:
        raise ValueError(f"prompt_type must be one of {sorted(_PROMPTS)}")
    req = pb.SegmentRequest(
        prompt_type=_PROMPTS[prompt_type],
        points_per_side=points_per_side,
        max_masks=max_masks,
        vocabulary=list(labels),
        top_k=top_k,
        return_overlay=overlay,
        skip_labels=skip_labels,
        multimask=multimask,
        min_confidence=min_confidence,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
        box_nms_thresh=box_nms_thresh,
        points=[pb.Point(x=p[0], y=p[1], positive=bool(p[2]) if len(p) > 2 else True) for p in points],
        boxes=[pb.Box(x0=b[0], y0=b[1], x1=b[2], y1=b[3]) for b in boxes],
        with_depth=with_depth,
        with_text=with_text,
        text_options=text_options(text_box_thresh, text_min_confidence),
        vocabulary_name=vocabulary_name,
        label_mode=_mode(label_mode),
        thresholds=thresholds or {},
    )
    _set_image(req, image, file_id)
    return req


_MODES = {"single": pb.LABEL_MODE_SINGLE, "multi": pb.LABEL_MODE_MULTI}


def _mode(label_mode: str) -> int:
    if label_mode not in _MODES:
        raise ValueError(f"label_mode must be one of {sorted(_MODES)}")
    return _MODES[label_mode]


def vocabulary_label(label) -> pb.VocabularyLabel:
    """A label of CreateVocabulary: a name, (name, prompts), or a dict with name, prompts, threshold."""
    if isinstance(label, str):
        return pb.VocabularyLabel(name=label)
    if isinstance(label, dict):
        return pb.VocabularyLabel(**label)
    name, prompts = label
    return pb.VocabularyLabel(name=name, prompts=list(prompts))


def example(
    file_id: str = "",
    *,
    box: Sequence[float] | None = None,
    mask: dict | None = None,
    request_id: str = "",
    mask_index: int = 0,
    negative: bool = False,
) -> pb.Example:
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


def vocabulary_requests(method: str, *args, **kw):
    """The request message of a vocabulary method (the two clients' shared builder)."""
    if method == "CreateVocabulary":
        name, labels = args
        return pb.CreateVocabularyRequest(
            name=name, labels=[vocabulary_label(lab) for lab in labels], replace=kw.get("replace", False),
            alpha=kw.get("alpha", 0.0), beta=kw.get("beta", 0.0),
        )  # fmt: skip
    if method == "GetVocabulary":
        return pb.GetVocabularyRequest(name=args[0])
    if method == "ListVocabularies":
        return pb.ListVocabulariesRequest()
    if method == "DeleteVocabulary":
        return pb.DeleteVocabularyRequest(name=args[0])
    if method == "AddExamples":
        vocabulary, label, examples = args
        return pb.AddExamplesRequest(vocabulary=vocabulary, label=label, examples=list(examples))
    if method == "RemoveExamples":
        vocabulary, label = args
        return pb.RemoveExamplesRequest(vocabulary=vocabulary, label=label, example_ids=list(kw.get("ids", ())),
                                        remove_label=kw.get("remove_label", False))  # fmt: skip
    if method == "Relabel":
        return pb.RelabelRequest(
            request_id=args[0], vocabulary=list(kw.get("labels", ())), vocabulary_name=kw.get("vocabulary_name", ""),
            label_mode=_mode(kw.get("label_mode", "single")), top_k=kw.get("top_k", 0),
            min_confidence=kw.get("min_confidence"), thresholds=kw.get("thresholds") or {},
        )  # fmt: skip
    raise ValueError(method)


class _VocabularyCalls:
    """Vocabulary and relabel calls, shared by both clients (``_call`` is sync or async)."""

    def create_vocabulary(
        self, name: str, labels, *, replace: bool = False, alpha: float = 0.0, beta: float = 0.0
    ):
        """``labels``: names, (name, prompts) pairs, or dicts (name, prompts, threshold)."""
        return self._call("CreateVocabulary", name, labels, replace=replace, alpha=alpha, beta=beta)

    def get_vocabulary(self, name: str):
        return self._call("GetVocabulary", name)

    def list_vocabularies(self):
        return self._call("ListVocabularies")

    def delete_vocabulary(self, name: str):
        return self._call("DeleteVocabulary", name)

    def add_examples(self, vocabulary: str, label: str, examples):
        """``examples``: :func:`example` messages."""
        return self._call("AddExamples", vocabulary, label, examples)

    def remove_examples(self, vocabulary: str, label: str, ids=(), remove_label: bool = False):
        return self._call("RemoveExamples", vocabulary, label, ids=ids, remove_label=remove_label)

    def relabel(self, request_id: str, *, labels=(), vocabulary_name: str = "", label_mode: str = "single",
                top_k: int = 0, min_confidence: float | None = None, thresholds: dict | None = None):  # fmt: skip
        """A kept answer's masks scored again (no SAM2, no CLIP image tower)."""
        return self._call("Relabel", request_id, labels=labels, vocabulary_name=vocabulary_name,
                          label_mode=label_mode, top_k=top_k, min_confidence=min_confidence,
                          thresholds=thresholds)  # fmt: skip


def text_options(box_thresh: float | None = None, min_confidence: float | None = None) -> pb.TextOptions:
    return pb.TextOptions(box_thresh=box_thresh, min_confidence=min_confidence)


def _set_image(req, image: ImageLike | None, file_id: str | None):
    if (image is None) == (file_id is None):
        raise ValueError("give exactly one of image or file_id")
    if file_id is not None:
        req.file_id = file_id
    else:
        req.image = _image_bytes(image)
    return req


def depth_request(image: ImageLike | None = None, *, file_id: str | None = None) -> pb.EstimateDepthRequest:
    return _set_image(pb.EstimateDepthRequest(), image, file_id)


def text_request(
    image: ImageLike | None = None,
    *,
    file_id: str | None = None,
    box_thresh: float | None = None,
    min_confidence: float | None = None,
) -> pb.ExtractTextRequest:
    return _set_image(pb.ExtractTextRequest(options=text_options(box_thresh, min_confidence)), image, file_id)


def depth_array(depth: pb.DepthMap):
    """A DepthMap's values as a float32 numpy array [height, width] (relative inverse depth:
    larger is nearer), decoded as the proto documents."""
    import numpy as np

    q = np.frombuffer(depth.data, dtype="<u2").reshape(depth.height, depth.width)
    lo, hi = np.float32(depth.min), np.float32(depth.max)
    return lo + q.astype(np.float32) * np.float32((hi - lo) / np.float32(65535))


class SegmenterClient(_VocabularyCalls):
    """Blocking client. ``with SegmenterClient("127.0.0.1:50051") as c: c.segment("photo.jpg")``."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float | None = None,
        tls_ca: str | os.PathLike | None = None,
        token: str | None = None,
    ):
        self.channel, self.metadata = _open_channel(grpc, target, tls_ca, token)
        self.stub = pb_grpc.SegmenterStub(self.channel)
        self.timeout = timeout

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, *args, **kw):
        return getattr(self.stub, method)(
            vocabulary_requests(method, *args, **kw), timeout=self.timeout, metadata=self.metadata
        )

    def upload(self, image: ImageLike, filename: str = "") -> pb.UploadResponse:
        return self.stub.Upload(
            pb.UploadRequest(image=_image_bytes(image), filename=filename),
            timeout=self.timeout,
            metadata=self.metadata,
        )

    def segment(
        self, image: ImageLike | None = None, timeout: float | None = None, **kw
    ) -> pb.SegmentResponse:
        return self.stub.Segment(
            build_request(image, **kw), timeout=timeout or self.timeout, metadata=self.metadata
        )

    def stream_segment(
        self, image: ImageLike | None = None, timeout: float | None = None, **kw
    ) -> Iterator[pb.SegmentEvent]:
        """Yields events; breaking out of the loop (or ``.cancel()`` on the call) stops the server's work."""
        return self.stub.StreamSegment(
            build_request(image, **kw), timeout=timeout or self.timeout, metadata=self.metadata
        )

    def estimate_depth(
        self, image: ImageLike | None = None, *, file_id: str | None = None, timeout: float | None = None
    ) -> pb.EstimateDepthResponse:
        return self.stub.EstimateDepth(
            depth_request(image, file_id=file_id), timeout=timeout or self.timeout, metadata=self.metadata
        )

    def extract_text(
        self, image: ImageLike | None = None, *, timeout: float | None = None, **kw
    ) -> pb.ExtractTextResponse:
        return self.stub.ExtractText(
            text_request(image, **kw), timeout=timeout or self.timeout, metadata=self.metadata
        )

    def server_info(self) -> pb.ServerInfo:
        return self.stub.GetServerInfo(
            pb.GetServerInfoRequest(), timeout=self.timeout, metadata=self.metadata
        )

    def health(self, service: str = "") -> str:
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout or 5, metadata=self.metadata
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until health says SERVING (models loaded and warm)."""
        import time

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


class AsyncSegmenterClient(_VocabularyCalls):
    """asyncio client. ``async with AsyncSegmenterClient() as c: async for ev in c.stream_segment(...)``."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float | None = None,
        tls_ca: str | os.PathLike | None = None,
        token: str | None = None,
    ):
        self.channel, self.metadata = _open_channel(grpc.aio, target, tls_ca, token)
        self.stub = pb_grpc.SegmenterStub(self.channel)
        self.timeout = timeout

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    def _call(self, method: str, *args, **kw):  # an awaitable call
        return getattr(self.stub, method)(
            vocabulary_requests(method, *args, **kw), timeout=self.timeout, metadata=self.metadata
        )

    async def upload(self, image: ImageLike, filename: str = "") -> pb.UploadResponse:
        return await self.stub.Upload(
            pb.UploadRequest(image=_image_bytes(image), filename=filename),
            timeout=self.timeout,
            metadata=self.metadata,
        )

    async def segment(
        self, image: ImageLike | None = None, timeout: float | None = None, **kw
    ) -> pb.SegmentResponse:
        return await self.stub.Segment(
            build_request(image, **kw), timeout=timeout or self.timeout, metadata=self.metadata
        )

    async def stream_segment(
        self, image: ImageLike | None = None, timeout: float | None = None, **kw
    ) -> AsyncIterator[pb.SegmentEvent]:
        call = self.stub.StreamSegment(
            build_request(image, **kw), timeout=timeout or self.timeout, metadata=self.metadata
        )
        try:
            async for ev in call:
                yield ev
        finally:
            call.cancel()

    async def estimate_depth(
        self, image: ImageLike | None = None, *, file_id: str | None = None, timeout: float | None = None
    ) -> pb.EstimateDepthResponse:
        return await self.stub.EstimateDepth(
            depth_request(image, file_id=file_id), timeout=timeout or self.timeout, metadata=self.metadata
        )

    async def extract_text(
        self, image: ImageLike | None = None, *, timeout: float | None = None, **kw
    ) -> pb.ExtractTextResponse:
        return await self.stub.ExtractText(
            text_request(image, **kw), timeout=timeout or self.timeout, metadata=self.metadata
        )

    async def server_info(self) -> pb.ServerInfo:
        return await self.stub.GetServerInfo(
            pb.GetServerInfoRequest(), timeout=self.timeout, metadata=self.metadata
        )

    async def health(self, service: str = "") -> str:
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout or 5, metadata=self.metadata
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
