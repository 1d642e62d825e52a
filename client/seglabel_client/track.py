"""Building a ``Track`` stream's messages: the session's opening, then frames with their prompts.

with SegmenterClient(target) as c:
    requests = [track_open("file"), track_frame(0, "f0.jpg", prompts=[track_prompt(1, box=(10, 10, 80, 60))])]
    for reply in c.track(iter(requests)):
        ...
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from seglabel_api import options as request_options
from seglabel_api.options import SegmentOptions
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb

from seglabel_client.client import ImageLike, _image_bytes

MODES = {"file": pb.TRACK_MODE_FILE, "live": pb.TRACK_MODE_LIVE}


def track_open(mode: str = "file", num_frames: int = 0, vocabulary: Sequence[str] = (), vocabulary_name: str = "",
               label_every: int = 0, detect_options: SegmentOptions | None = None) -> pb.TrackRequest:  # fmt: skip
    """The first message: ``file`` (every frame answered) or ``live`` (stale frames dropped); with
    ``vocabulary`` or ``vocabulary_name`` the tracks are labelled (every ``label_every``-th frame);
    ``detect_options``: the grid's options on frames sent with ``detect``."""
    o = pb.TrackOpen(mode=MODES[mode], num_frames=num_frames, vocabulary=list(vocabulary),
                     vocabulary_name=vocabulary_name, label_every=label_every)  # fmt: skip
    if detect_options is not None:
        o.detect_options.CopyFrom(request_options.to_pb(detect_options, pb.SegmentRequest()))
    return pb.TrackRequest(open=o)


def track_prompt(object_id: int, points: Sequence[tuple[float, float, bool]] = (),
                 box: Sequence[float] | None = None) -> pb.TrackPrompt:  # fmt: skip
    """Clicks ``(x, y, positive)`` and/or a box ``(x0, y0, x1, y1)`` in the frame's pixels."""
    p = pb.TrackPrompt(object_id=object_id, points=[pb.Point(x=x, y=y, positive=pos) for x, y, pos in points])
    if box is not None:
        p.box.CopyFrom(pb.Box(x0=box[0], y0=box[1], x1=box[2], y1=box[3]))
    return p


def track_frame(index: int, image: ImageLike, prompts: Iterable[pb.TrackPrompt] = (), remove: Iterable[int] = (),
                detect: bool = False) -> pb.TrackRequest:  # fmt: skip
    """A frame with the prompts that start objects on it, the objects to stop, and ``detect``: the
    grid on it starts objects for the masks no track covers."""
    return pb.TrackRequest(frame_index=index, image=_image_bytes(image), prompts=list(prompts), remove=list(remove),
                           detect=detect)  # fmt: skip


def track_clicks(index: int, prompts: Iterable[pb.TrackPrompt] = (), remove: Iterable[int] = (),
                 detect: bool = False) -> pb.TrackRequest:  # fmt: skip
    """Prompts on the frame last answered (``index``), no image: a paused video's clicks. Each
    prompt carries all its object's clicks on that frame so far; a tracked object is corrected
    there, a new id starts one. The reply is that frame again, every object on it."""
    return pb.TrackRequest(frame_index=index, prompts=list(prompts), remove=list(remove), detect=detect)
