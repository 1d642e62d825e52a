"""Parity: every output of every exported graph against its PyTorch module (sam2's / open_clip's
own computation), on fresh random inputs and a real photo. Export runs it before a repository is
written; ``seglabel-export verify`` runs it again on an existing one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from seglabel_server.models import images
from seglabel_server.models.tokenizer import ClipTokenizer
from seglabel_server.models.torch_modules.modules import Sam2ImageEncoder, Sam2MaskDecoder
from seglabel_server.models.torch_modules.towers import ClipImageEncoder, ClipTextEncoder, DepthEstimator

PARITY_TOL = 1e-4
DECODER_NS = (1, 7, 256)
DECODER_PS = (1, 2, 3)
PARITY_LABELS = ["a photo of a person.", "a photo of a dog.", "sky", "a photo of a traffic light."]

Log = Callable[[str], None]


def rel_l2(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-12))


class _Ort:
    def __init__(self, path: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # No arena: the decoder at N=256 full-size otherwise keeps >15 GB reserved on a 24 GB machine.
        opts.enable_cpu_mem_arena = False
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sess.run(None, feeds)


def _torch_run(module, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        outs = module(*[torch.from_numpy(v) for v in feeds.values()])
    return [o.numpy() for o in outs] if isinstance(outs, tuple) else [outs.numpy()]


def _decoder_reference(module, feeds: dict[str, np.ndarray], chunk: int = 32) -> list[np.ndarray]:
    """The reference decoder on chunks of prompts (independent; bounds memory), outputs joined with
    ``kept`` shifted back to whole-batch prompt indices."""
    n = feeds["point_coords"].shape[0]
    parts = []
    for i in range(0, n, chunk):
        sub = {
            k: (v[i : i + chunk] if k in ("point_coords", "point_labels") else v) for k, v in feeds.items()
        }
        out = _torch_run(module, sub)
        out[1] = out[1] + i
        parts.append(out)
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


def decoder_threshold(iou: np.ndarray) -> float:
    """A ``min_iou`` that keeps about half of the prompts, halfway between two neighbouring best
    IoUs (so that float noise cannot flip a prompt across it)."""
    best = np.sort(iou.max(axis=1))
    if len(best) < 2:
        return float("-inf")
    mid = len(best) // 2
    return float((best[mid - 1] + best[mid]) / 2)


def _compare(
    name: str, case: str, names: list[str], ours: list[np.ndarray], ref: list[np.ndarray]
) -> list[dict]:
    rows = []
    for out_name, a, b in zip(names, ours, ref):
        if a.shape != b.shape:
            rows.append(
                {
                    "model": name,
                    "case": case,
                    "output": out_name,
                    "rel_l2": float("inf"),
                    "ok": False,
                    "note": f"shape {a.shape} vs {b.shape}",
                }
            )
            continue
        err = rel_l2(a, b)
        rows.append({"model": name, "case": case, "output": out_name, "rel_l2": err, "ok": err <= PARITY_TOL})
    return rows


def decoder_prompts(rng: np.random.Generator, n: int, p: int, size: int):
    """Random prompts of P points: a box (labels 2,3) in some, background points and padding in others."""
    coords = rng.uniform(0, size, (n, p, 2)).astype(np.float32)
    labels = rng.integers(0, 2, (n, p)).astype(np.int32)
    labels[:, 0] = 1
    if p >= 2:
        box = rng.random(n) < 0.5
        labels[box, 0], labels[box, 1] = 2, 3
        lo, hi = np.minimum(coords[box, 0], coords[box, 1]), np.maximum(coords[box, 0], coords[box, 1])
        coords[box, 0], coords[box, 1] = lo, hi
    if p >= 3:
        labels[rng.random(n) < 0.3, -1] = -1
    return {"point_coords": coords, "point_labels": labels}


def parity_checks(
    repo: Path,
    manifest: dict,
    modules: dict,
    photo: np.ndarray,
    *,
    seed: int,
    decoder_ns=DECODER_NS,
    decoder_ps=DECODER_PS,
    log: Log = print,
) -> list[dict]:
    """Every output of every graph vs its PyTorch module, on fresh random inputs and a real photo."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    models = manifest["models"]
    sam = manifest["sam2"]
    size = sam["image_size"]

    enc_name, dec_name = "sam2_image_encoder", "sam2_mask_decoder"
    enc_ort = _Ort(repo / models[enc_name]["path"])
    photo_in = images.sam_preprocess(photo, size, sam["pixel_mean"], sam["pixel_std"])[None]
    random_in = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    features = {}
    for case, x in (("random-b2", random_in), ("photo", photo_in)):
        feeds = {"images": x}
        ours, ref = enc_ort(feeds), _torch_run(modules[enc_name], feeds)
        rows += _compare(enc_name, case, Sam2ImageEncoder.output_names, ours, ref)
        # The decoder takes one image's features: the last image of the batch.
        features[case] = {k: v[-1:] for k, v in zip(Sam2ImageEncoder.output_names, ref)}
    log(f"  parity {enc_name}: done")

    dec_ort = _Ort(repo / models[dec_name]["path"])
    no_min = {"min_iou": np.array([-np.inf], np.float32)}
    for case, feats in features.items():
        for n in decoder_ns:
            for p in decoder_ps:
                feeds = {**feats, **decoder_prompts(rng, n, p, size), **no_min}
                ref = _decoder_reference(modules[dec_name], feeds)
                rows += _compare(
                    dec_name, f"{case} N={n} P={p}", Sam2MaskDecoder.output_names, dec_ort(feeds), ref
                )
                if n > 1 and p == decoder_ps[0]:  # min_iou keeps about half of the prompts
                    feeds["min_iou"] = np.array([decoder_threshold(ref[0])], np.float32)
                    ours, ref = dec_ort(feeds), _decoder_reference(modules[dec_name], feeds)
                    rows += _compare(
                        dec_name, f"{case} N={n} P={p} min_iou", Sam2MaskDecoder.output_names, ours, ref
                    )
        log(f"  parity {dec_name} ({case}): done")

    if "sam2_track_conditioner" in models:
        # The video graphs on their example inputs drawn again (the photo's features for the frame,
        # two objects whose memory plans differ: the conditioner's padding masked)
        from seglabel_export.video import graph_examples

        torch.manual_seed(seed)
        for name, (example, _) in graph_examples(modules["sam2_track_conditioner"].model).items():
            feeds = {k: v.numpy() for k, v in example.items()}
            if "image_embed" in feeds and name != "sam2_track_decoder":
                feeds["image_embed"] = features["photo"]["image_embed"]
            if "memory_valid" in feeds:
                feeds["memory_valid"][1, 2] = feeds["ptr_valid"][1, 1] = 0.0
            ours, ref = _Ort(repo / models[name]["path"])(feeds), _torch_run(modules[name], feeds)
            rows += _compare(name, "random", list(modules[name].output_names), ours, ref)
        log("  parity sam2 video: done")

    if "clip_image_encoder" in models:
        clip = manifest["clip"]
        img_ort = _Ort(repo / models["clip_image_encoder"]["path"])
        h, w = photo.shape[:2]
        crops = [
            images.clip_crop(photo, None, (0, 0, w, h), clip["image_size"], clip["mean"], clip["std"]),
            images.clip_crop(
                photo, None, (w // 4, h // 4, w // 2, h // 2), clip["image_size"], clip["mean"], clip["std"]
            ),
        ]
        for case, x in (
            ("random-b3", rng.standard_normal((3, 3, 224, 224)).astype(np.float32)),
            ("photo-crops", np.stack(crops)),
        ):
            feeds = {"pixel_values": x}
            rows += _compare(
                "clip_image_encoder",
                case,
                ClipImageEncoder.output_names,
                img_ort(feeds),
                _torch_run(modules["clip_image_encoder"], feeds),
            )
        txt_ort = _Ort(repo / models["clip_text_encoder"]["path"])
        tok = ClipTokenizer(repo / clip["tokenizer"], clip["context_length"])
        random_ids = rng.integers(1, clip["vocab_size"] - 2, (2, clip["context_length"])).astype(np.int32)
        random_ids[:, -1] = clip["vocab_size"] - 1  # <eot> last: the pooled position
        for case, ids in (("random-ids", random_ids), ("labels", tok(PARITY_LABELS))):
            feeds = {"input_ids": ids}
            rows += _compare(
                "clip_text_encoder",
                case,
                ClipTextEncoder.output_names,
                txt_ort(feeds),
                _torch_run(modules["clip_text_encoder"], feeds),
            )
        log("  parity clip: done")

    if "depth_estimator" in models:
        from seglabel_api import SAMPLE_IMAGES, sample_image_bytes

        d = manifest["depth"]
        s = d["image_size"]
        depth_ort = _Ort(repo / models["depth_estimator"]["path"])
        cases = [("random-b2", rng.standard_normal((2, 3, s, s)).astype(np.float32))]
        for name in SAMPLE_IMAGES:  # every bundled photo
            img = images.decode_image(sample_image_bytes(name))
            cases.append((f"photo {name}", images.depth_preprocess(img, s, d["mean"], d["std"])[None]))
        for case, x in cases:
            feeds = {"images": x}
            rows += _compare(
                "depth_estimator",
                case,
                DepthEstimator.output_names,
                depth_ort(feeds),
                _torch_run(modules["depth_estimator"], feeds),
            )
        log("  parity depth: done")
    return rows


def format_parity(rows: list[dict]) -> str:
    lines = [f"{'model':<20} {'case':<22} {'output':<18} {'rel L2':>10}  ok"]
    for r in rows:
        lines.append(
            f"{r['model']:<20} {r['case']:<22} {r['output']:<18} {r['rel_l2']:>10.2e}  "
            f"{'yes' if r['ok'] else 'NO'}"
        )
    worst = max((r["rel_l2"] for r in rows), default=0.0)
    lines.append(
        f"{len(rows)} outputs compared, worst rel L2 {worst:.2e} (tolerance {PARITY_TOL:.0e}), "
        f"{sum(not r['ok'] for r in rows)} failed"
    )
    return "\n".join(lines)


def default_photo() -> np.ndarray:
    from seglabel_api import sample_image_bytes

    return images.decode_image(sample_image_bytes())
