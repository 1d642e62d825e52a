"""A zero-cost stand-in for the models, for benchmarks and tests of the server around them (the way
Triton's perf_analyzer measures a server with identity models). Not a backend the server can be
started with: it is not registered with ``seglabel_server.backends`` and lives outside the server's
package; a benchmark puts it in place of ``service.loading.open_backend`` in its own process.

It runs every model once, for real, when it is built (a real backend on the benchmark's image and
grid) and from then on answers each call with those recorded outputs, sized to the call: the encoder's
features for every image, each grid prompt's own decoder outputs (found by its coordinates; other
prompts take a recorded row in turn), the IoU filter applied as the graph applies it, CLIP embeddings
row by row. What it returns is therefore shaped like the real models' outputs, masks included (their
run counts are the recorded input's), and costs the server next to nothing; its answers are not the
answers of the image a client sends, so it never serves answers to anyone."""

from __future__ import annotations

import collections

import numpy as np
from seglabel_server import amg
from seglabel_server.backends.base import Backend, BackendInfo
from seglabel_server.models import images
from seglabel_server.models.kinds import sam2
from seglabel_server.models.repository import ModelRepository


class ZeroCostBackend(Backend):
    """Recorded outputs of ``real`` (a loaded backend of ``repo``) on ``image`` and a ``grid`` of
    prompts, replayed at no cost."""

    capabilities = frozenset()

    def __init__(self, repo: ModelRepository, real: Backend, image: np.ndarray, grid: int, cache: int = 64):
        self.info = BackendInfo(name="zero-cost (recorded outputs; benchmarks only)", device="cpu")
        self.repo = repo
        s = repo.sam2["image_size"]
        x = images.sam_preprocess(image, s, repo.sam2["pixel_mean"], repo.sam2["pixel_std"])[None]
        self.features = real.run("sam2_image_encoder", {"images": x})
        pts = amg.build_point_grid(grid) * np.array([image.shape[1], image.shape[0]])
        coords = amg.to_model_coords(pts, image.shape[:2], s)[:, None, :]
        feats = sam2.ImageFeatures({k: self.features[k] for k in sam2.ENCODER_OUTPUTS})
        outs = [sam2.decode(real, feats, coords[i : i + 16], np.ones((len(coords[i : i + 16]), 1), np.int32))
                for i in range(0, len(coords), 16)]  # fmt: skip
        self.decoder = {
            "iou_predictions": np.concatenate([o.iou for o in outs]),
            "masks": np.concatenate([o.masks.numpy() for o in outs]),
            "stability_scores": np.concatenate([o.stability for o in outs]),
            "single_mask": np.concatenate([o.single_mask.numpy() for o in outs]),
            "single_iou": np.concatenate([o.single_iou for o in outs]),
        }
        self.rows = {c.tobytes(): i for i, c in enumerate(coords.astype(np.float32))}
        self.embeds: dict[str, np.ndarray] = {}
        if repo.has_clip:
            crops = np.zeros((1, 3, repo.clip["image_size"], repo.clip["image_size"]), np.float32)
            dim = np.asarray(real.run("clip_image_encoder", {"pixel_values": crops})["image_embeds"]).shape[
                -1
            ]
            rng = np.random.default_rng(0)
            for name in ("clip_image_encoder", "clip_text_encoder"):
                e = rng.standard_normal((1024, dim)).astype(np.float32)
                self.embeds[name] = e / np.linalg.norm(e, axis=1, keepdims=True)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._size = cache
        self._loaded: list[str] = []

    def load(self, model: str) -> None:
        if model in ("sam2_image_encoder", "sam2_mask_decoder") or model in self.embeds:
            self._loaded.append(model)

    def unload(self, model: str) -> None:
        if model in self._loaded:
            self._loaded.remove(model)

    def loaded(self) -> list[str]:
        return list(self._loaded)

    def run(self, model: str, feeds: dict) -> dict:
        if model == "sam2_image_encoder":
            n = len(feeds["images"])
            return {k: np.broadcast_to(v, (n, *v.shape[1:])) for k, v in self.features.items()}
        if model == "sam2_mask_decoder":
            return self._decode(feeds)
        name = {"clip_image_encoder": "image_embeds", "clip_text_encoder": "text_embeds"}[model]
        n = len(next(iter(feeds.values())))
        table = self.embeds[model]
        return {name: table[np.arange(n) % len(table)]}

    def _decode(self, feeds: dict) -> dict:
        """Each prompt's recorded row; masks only for prompts whose best IoU passes ``min_iou`` (the
        graph's filter). Batches seen before come from a small cache: the server pays nothing."""
        coords, min_iou = feeds["point_coords"], float(feeds["min_iou"][0])
        key = (coords.tobytes(), min_iou)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        n_rec = len(self.decoder["iou_predictions"])
        rows = np.array([self.rows.get(c.tobytes(), i % n_rec) for i, c in enumerate(coords)], np.int64)
        d = self.decoder
        iou = d["iou_predictions"][rows]
        kept = np.nonzero(iou.max(axis=1) > min_iou)[0]
        out = {
            "iou_predictions": iou,
            "kept": kept,
            "masks": d["masks"][rows[kept]],
            "stability_scores": d["stability_scores"][rows[kept]],
            "single_mask": d["single_mask"][rows],
            "single_iou": d["single_iou"][rows],
        }
        self._cache[key] = out
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return out
