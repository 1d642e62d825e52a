"""A StreamSegment's events made into the SegmentResponse a unary Segment answers: the summary, with
the masks, the depth map and the text the stream sent before it put back."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable

from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb

Observer = Callable[[pb.SegmentEvent], None]


class StreamMerge:
    """Feed it the events (:meth:`add`), then take the :meth:`response`."""

    def __init__(self) -> None:
        self.masks: list[pb.Mask] = []
        self.labels: list[pb.Label] = []
        self.depth: pb.SegmentEvent.DepthEvent | None = None
        self.text: pb.SegmentEvent.TextEvent | None = None
        self.summary: pb.SegmentResponse | None = None

    def add(self, ev: pb.SegmentEvent) -> None:
        kind = ev.WhichOneof("event")
        if kind == "masks":
            self.masks += list(ev.masks.masks)
        elif kind == "label_update":
            self.labels += list(ev.label_update.labels)
        elif kind == "depth":
            self.depth = ev.depth
        elif kind == "text":
            self.text = ev.text
        elif kind == "summary":
            self.summary = ev.summary

    def response(self) -> pb.SegmentResponse:
        if self.summary is None:
            raise RuntimeError("the stream ended without its summary")
        out = pb.SegmentResponse()
        out.CopyFrom(self.summary)
        del out.masks[:]
        out.masks.extend(self.masks)
        if self.depth is not None:
            out.depth.CopyFrom(self.depth.depth)
            out.mask_depth.extend(self.depth.mask_depth)
        if self.text is not None:
            out.text.CopyFrom(self.text.text)
            out.mask_text.extend(self.text.mask_text)
        return out


def merge(events: Iterable[pb.SegmentEvent], observe: Observer | None = None) -> pb.SegmentResponse:
    """The response of a (sync) stream; ``observe`` sees each event as it comes (progress)."""
    merged = StreamMerge()
    for ev in events:
        merged.add(ev)
        if observe is not None:
            observe(ev)
    return merged.response()


async def merge_async(
    events: AsyncIterable[pb.SegmentEvent], observe: Observer | None = None
) -> pb.SegmentResponse:
    """:func:`merge` of an async stream."""
    merged = StreamMerge()
    async for ev in events:
        merged.add(ev)
        if observe is not None:
            observe(ev)
    return merged.response()
