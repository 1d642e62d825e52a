"""The device mask-and-label path of the torch backend: everything per mask stays in the backend's
memory (the GPU, or CPU torch) until it is an answer.

:meth:`TorchBackend.device_ops` gives it (a ``backends.base.DeviceMaskOps``), which the pipeline's
``mask_path.DeviceMaskPath`` runs; each method is the device twin of a host function and is tested
equal to it:

- :meth:`sam_preprocess` <- :func:`images.sam_preprocess` (Pillow's two-pass antialiased bilinear,
  rounded to 8 bits between and after the passes, as Pillow does);
- :meth:`take`, :meth:`low_res_boxes`, :meth:`rows`, :meth:`stack` <- ``pipeline.masks.HostLogits``:
  the grid's candidate filter (``pipeline.masks.CandidateSet``) keeps the logits on the device and
  only their scores and low-res boxes on the host; :meth:`prompted` <- :func:`pipeline.masks.prompted`;
- :meth:`finish` <- :meth:`pipeline.masks.MaskFinisher.describe` (upsample the survivors, boxes,
  areas, and COCO's compressed RLE strings written on the device by :func:`coco_rle_bytes`: one
  device-to-host copy of the answers' bytes, no loop over runs on the host);
- :meth:`crops` <- :func:`images.clip_crop` (every mask's box + context cut, background faded and
  resized to the CLIP size in one ``roi_align`` over the image and one over the masks).

Only answers cross to the host: RLE strings, boxes, areas, scores, prompt indices. Full-size
masks never do: the overlay PNG and the depth/text joins decode the RLE answers on the host.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from seglabel_server.amg import MaskData
from seglabel_server.models.images import crop_region
from seglabel_server.models.torch_modules.modules import stability_score
from seglabel_server.types import MaskResult


class TorchDeviceOps:
    def __init__(self, device: torch.device):
        self.device = device

    def _ready(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` finished on this thread's stream before another thread's stream (an inference
        worker's) reads it."""
        if t.device.type == "cuda":
            torch.cuda.current_stream(t.device).synchronize()
        return t

    # -- images ------------------------------------------------------------------------------------
    def upload(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 [H,W,3] -> uint8 [3,H,W] on the device (the one copy of the image)."""
        with warnings.catch_warnings():  # a read-only (cached) image: only read, then copied
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(np.ascontiguousarray(image))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        return self._ready(t.permute(2, 0, 1).contiguous())

    def sam_preprocess(self, image: torch.Tensor, size: int, mean, std) -> torch.Tensor:
        """uint8 [3,H,W] -> float32 [3,S,S]: Pillow's BILINEAR resize (a triangle filter widened by
        the scale when shrinking: torch's antialiased bilinear), horizontal pass first, each pass
        rounded to 8 bits as Pillow's, then [0,1] and normalised."""
        x = image[None].float()
        h, w = x.shape[-2:]
        # Pillow rounds half up (fixed point + half, shifted); torch.round would round half to even.
        if w != size:
            x = F.interpolate(x, size=(h, size), mode="bilinear", align_corners=False, antialias=True)
            x = x.add_(0.5).floor_().clamp_(0, 255)
        if h != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            x = x.add_(0.5).floor_().clamp_(0, 255)
        m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1)
        return self._ready(((x[0] * (1.0 / 255.0)) - m) / s)

    # -- candidates on low-res logits ----------------------------------------------------------------
    def take(self, out, rows: np.ndarray, cands: np.ndarray) -> torch.Tensor:
        """Candidates (prompt row, candidate) of one decoder output: [K,L,L] logits, on the device."""
        data = out.masks.data
        return data[torch.as_tensor(rows, device=data.device), torch.as_tensor(cands, device=data.device)]

    def low_res_boxes(self, logits: torch.Tensor, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """([K,4] inclusive low-res boxes, [K] non-empty) on the host, computed on the device."""
        binary = logits > threshold
        both = torch.cat([masks_to_boxes(binary), binary.flatten(1).any(dim=1, keepdim=True).float()], 1)
        host = both.cpu().numpy()
        return host[:, :4].astype(np.float32), host[:, 4] > 0

    @staticmethod
    def rows(block: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        return block[torch.as_tensor(idx, device=block.device)]

    @staticmethod
    def stack(rows: list) -> torch.Tensor:
        return torch.stack(rows)

    def prompted(self, p, outs: list, sam: dict) -> MaskData:
        """:func:`pipeline.masks.prompted` on the device."""
        low = sam["low_res_size"]
        if p.multimask:
            logits = torch.cat([o.masks.data.reshape(-1, low, low) for o in outs])
            iou = torch.cat([o.dev["iou"][o.dev["kept"]].reshape(-1) for o in outs]).float()
            stab = torch.cat([o.dev["stability"].reshape(-1) for o in outs]).float()
            order = torch.sort(iou, descending=True, stable=True).indices[: p.max_masks]
        else:
            logits = torch.cat([o.single_mask.data.reshape(-1, low, low) for o in outs])
            iou = torch.cat([o.dev["single_iou"].reshape(-1) for o in outs]).float()
            stab = stability_score(logits, sam["mask_threshold"], sam["stability_offset"])
            order = torch.arange(min(len(iou), p.max_masks), device=logits.device)
        host = torch.stack([iou[order].double(), stab[order].double()]).cpu().numpy()
        return MaskData(logits=logits[order], iou=host[0], stability=host[1], point=[None] * len(order))

    # -- survivors -> answers --------------------------------------------------------------------------
    def finish(self, cand: MaskData, hw, threshold: float) -> tuple[list[MaskResult], torch.Tensor]:
        """Survivors upsampled to the image, empty ones dropped: (MaskResults without index, full
        masks [K,H,W] bool on the device). One device-to-host copy: areas, boxes, RLE strings."""
        h, w = hw
        logits = cand["logits"]
        if len(logits) == 0:
            return [], torch.zeros((0, h, w), dtype=torch.bool, device=self.device)
        full = F.interpolate(logits[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)
        full = full[:, 0] > threshold
        k, n = len(full), h * w
        area = full.flatten(1).sum(dim=1)
        boxes = masks_to_boxes(full)
        flat = full.transpose(1, 2).reshape(k, n)  # COCO RLE runs in column-major order
        text, nbytes = coco_rle_bytes(flat)
        # The answers in one copy: areas, boxes, each mask's string length, then the strings' bytes.
        head = torch.cat([area, boxes.long().flatten(), nbytes]).to(torch.int32)
        host = torch.cat([head.view(torch.uint8), text]).cpu().numpy()
        head_h = host[: 4 * 6 * k].view(np.int32)
        area_h, boxes_h, nbytes_h = head_h[:k], head_h[k : 5 * k].reshape(k, 4), head_h[5 * k :]
        strings = host[4 * 6 * k :].tobytes()
        ends = np.cumsum(nbytes_h)
        results, keep = [], []
        for i in range(k):
            if area_h[i] == 0:
                continue
            x0, y0, x1, y1 = (float(v) for v in boxes_h[i])
            results.append(
                MaskResult(
                    index=-1,
                    rle={"size": [h, w], "counts": strings[ends[i] - nbytes_h[i] : ends[i]].decode("ascii")},
                    bbox=(x0, y0, x1 - x0 + 1, y1 - y0 + 1),
                    area=int(area_h[i]),
                    predicted_iou=float(cand["iou"][i]),
                    stability_score=float(cand["stability"][i]),
                    point=cand["point"][i],
                )
            )
            keep.append(i)
        if len(keep) < k:
            full = full[torch.as_tensor(keep, dtype=torch.long, device=full.device)]
        return results, full

    # -- CLIP crops -------------------------------------------------------------------------------------
    def crops(
        self,
        image: torch.Tensor,
        full: torch.Tensor,
        boxes_xywh: list,
        size: int,
        mean,
        std,
        context: float,
        background_keep: float,
    ) -> torch.Tensor:
        """[K,3,S,S] CLIP inputs as :func:`images.clip_crop`: each box grown by ``context``, the
        region centred on a square of CLIP's mean grey, resized (every output pixel the average of
        bilinear samples over its footprint: ``roi_align`` with adaptive sampling), pixels outside
        the mask faded to grey, normalised. Two batched ops, no host round trip."""
        _, h, w = image.shape
        rois, inside = _crop_geometry(boxes_xywh, w, h, size, context)
        dev = image.device
        rois_t = torch.from_numpy(rois).to(dev)
        img = image[None].float()
        region = roi_align(img, rois_t, (size, size), 1.0, -1, aligned=True)  # [K,3,S,S]
        mrois = rois_t.clone()
        mrois[:, 0] = torch.arange(len(rois), device=dev, dtype=mrois.dtype)
        keep = roi_align(full[:, None].float(), mrois, (size, size), 1.0, -1, aligned=True)  # [K,1,S,S]
        # Pillow resizes 8-bit images: its crops and mask weights come back rounded to 8 bits.
        region = region.round_()
        keep = (keep * 255.0).round_() * (1.0 / 255.0)
        grey = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1) * 255.0
        region = grey + (keep + background_keep * (1.0 - keep)) * (region - grey)
        ins = torch.from_numpy(inside).to(dev)  # [K,4] oy, oy+th, ox, ox+tw
        ys = torch.arange(size, device=dev)
        rows = (ys[None] >= ins[:, :1]) & (ys[None] < ins[:, 1:2])
        cols = (ys[None] >= ins[:, 2:3]) & (ys[None] < ins[:, 3:4])
        inside_t = (rows[:, :, None] & cols[:, None, :])[:, None]
        canvas = torch.where(inside_t, region, grey)
        m = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        return self._ready((canvas * (1.0 / 255.0) - m) / s)


# Signed values that fit in 1, 2, ... 7 chunks of COCO's string encoding (5 bits each, the top bit of
# the last chunk the sign): a chunk more for each threshold reached by x (x >= 0) or ~x (x < 0).
_CHUNK_LIMITS = [16, 512, 16384, 524288, 16777216, 536870912]


def coco_rle_bytes(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """COCO's compressed RLE strings of ``flat`` [K,N] bool masks (each already in column-major
    order), written on the masks' device: (all strings' ASCII bytes concatenated [B] uint8, each
    mask's byte count [K] int64). Byte for byte what pycocotools' ``rleToString`` writes: run
    lengths starting with a run of zeros, each count from the third on stored as its difference to
    the count two before, then cut into 5-bit chunks, least significant first, 0x20 marking "more",
    plus 48. The host receives bytes proportional to the answer and runs no loop over runs."""
    k, n = flat.shape
    dev = flat.device
    if k == 0:
        return torch.zeros(0, dtype=torch.uint8, device=dev), torch.zeros(0, dtype=torch.long, device=dev)
    mask_i, pos = torch.nonzero(flat[:, 1:] != flat[:, :-1], as_tuple=True)
    changes = torch.bincount(mask_i, minlength=k)
    first = flat[:, 0].long()  # a mask starting with 1 starts with an empty run of zeros
    # Each mask's run boundaries, one segment per mask: 0, [0 if it starts with 1], change + 1..., N.
    seg = changes + 2 + first
    seg_start = torch.cumsum(seg, 0) - seg
    total = int(seg.sum())  # (a sync: the sizes below are data-dependent)
    bounds = torch.empty(total, dtype=torch.long, device=dev)
    bounds[seg_start] = 0
    bounds[seg_start + first] = 0
    bounds[seg_start + seg - 1] = n
    rank = torch.arange(len(pos), device=dev) - (torch.cumsum(changes, 0) - changes)[mask_i]
    bounds[seg_start[mask_i] + first[mask_i] + 1 + rank] = pos + 1
    # Run lengths: differences inside each segment (the first element of each segment has none).
    runs = seg - 1
    run_mask = torch.repeat_interleave(torch.arange(k, device=dev), runs)
    j = torch.arange(total - k, device=dev) - (torch.cumsum(runs, 0) - runs)[run_mask]
    idx = seg_start[run_mask] + 1 + j
    counts = bounds[idx] - bounds[idx - 1]
    x = counts.clone()
    later = j > 2
    x[later] -= counts[torch.nonzero(later).reshape(-1) - 2]
    # Chunks per value, byte offsets, then each chunk written where it goes.
    mag = torch.where(x >= 0, x, -x - 1)
    nchunks = torch.ones_like(x)
    for limit in _CHUNK_LIMITS:
        nchunks += (mag >= limit).long()
    offset = torch.cumsum(nchunks, 0) - nchunks
    size, most = torch.stack([nchunks.sum(), nchunks.max()]).tolist()
    out = torch.empty(size, dtype=torch.uint8, device=dev)
    for c in range(most):
        live = nchunks > c
        xv, nv = x[live], nchunks[live]
        chunk = (xv >> (5 * c)) & 0x1F
        chunk = chunk | ((nv - 1 > c).long() << 5)
        out[offset[live] + c] = (chunk + 48).to(torch.uint8)
    nbytes = torch.zeros(k, dtype=torch.long, device=dev).index_add_(0, run_mask, nchunks)
    return out, nbytes


def _crop_geometry(boxes_xywh, w: int, h: int, size: int, context: float) -> tuple[np.ndarray, np.ndarray]:
    """Per box, as :func:`images.clip_crop`: the ROI [K,5] (batch index, x0, y0, x1, y1 in image
    coordinates) whose S x S sampling grid puts the crop region at its place on the square canvas,
    and the region's place on the canvas [K,4] (oy, oy+th, ox, ox+tw)."""
    rois = np.zeros((len(boxes_xywh), 5), np.float32)
    inside = np.zeros((len(boxes_xywh), 4), np.int64)
    for i, box in enumerate(boxes_xywh):
        x0, y0, x1, y1, th, tw = crop_region(box, w, h, size, context)
        ch, cw = y1 - y0, x1 - x0
        oy, ox = (size - th) // 2, (size - tw) // 2
        sy, sx = ch / th, cw / tw  # image pixels per canvas pixel
        rois[i] = (0, x0 - ox * sx, y0 - oy * sy, x0 + (size - ox) * sx, y0 + (size - oy) * sy)
        inside[i] = (oy, oy + th, ox, ox + tw)
    return rois, inside


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """[N,H,W] bool -> [N,4] (x0, y0, x1, y1) inclusive bounds, as :func:`amg.masks_to_boxes`."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    has = rows.any(dim=1)
    zero = torch.zeros(n, dtype=torch.long, device=masks.device)
    x0 = torch.where(has, cols.byte().argmax(dim=1), zero)
    y0 = torch.where(has, rows.byte().argmax(dim=1), zero)
    x1 = torch.where(has, w - 1 - cols.flip(1).byte().argmax(dim=1), zero)
    y1 = torch.where(has, h - 1 - rows.flip(1).byte().argmax(dim=1), zero)
    return torch.stack([x0, y0, x1, y1], dim=1).float()
