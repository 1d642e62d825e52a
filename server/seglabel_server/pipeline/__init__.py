"""What runs for a request: prompts -> encoder -> decoder batches -> filters on low-res logits ->
upsample survivors -> RLE -> CLIP crops -> labels -> overlay; with depth / text asked for, the depth
model and OCR alongside, from the same decoded image, joined with the masks (``scene``).

The pipeline runs a :class:`~seglabel_server.types.SegmentJob` the service has resolved and checked.
``masks`` turns decoder outputs into mask results, ``labels`` classifies them, ``render`` draws the
answer, ``ocr`` reads text; :class:`Pipeline` orchestrates them as named steps. The per-mask work
(the encoder's input, the candidate filter's logits, upsampling, RLE, CLIP crops) is one
:class:`~seglabel_server.pipeline.mask_path.MaskPath`, bound when the pipeline is built: the host's
(numpy), or the backend's device kernels where it offers them (``Backend.device_ops``: the torch
backend), with which no full-size mask reaches the host (the overlay and the depth/text joins
decode the RLE answers instead). Model calls go through the scheduler (``await scheduler.run(stage, payload, ctx)``);
host work runs in a small thread pool so the asyncio loop stays free.
"""

from seglabel_server.pipeline.config import PipelineConfig
from seglabel_server.pipeline.pipeline import Pipeline, PipelineParts

__all__ = ["Pipeline", "PipelineConfig", "PipelineParts"]
