"""Read a model repository written by ``seglabel-export`` (manifest + Triton-style folders)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from seglabel_server.errors import ModelError

MANIFEST_NAME = "manifest.json"
TOKENIZER_FILE = "bpe_simple_vocab_16e6.txt.gz"
SAM_MODELS = ("sam2_image_encoder", "sam2_mask_decoder")
CLIP_MODELS = ("clip_image_encoder", "clip_text_encoder")
# 2: the decoder graph takes min_iou and upscales only the prompts that pass it.
FORMAT_VERSION = 2


@dataclass
class ModelRepository:
    root: Path
    manifest: dict

    @classmethod
    def load(cls, root: str | Path) -> ModelRepository:
        root = Path(root).resolve()
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise ModelError(
                f"{root}: no {MANIFEST_NAME}; export models first (seglabel-export, or make models)"
            )
        try:
            manifest = json.loads(path.read_text())
        except ValueError as exc:
            raise ModelError(f"{path}: unreadable manifest ({exc})") from exc
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ModelError(
                f"{path}: format_version {manifest.get('format_version')} (this server reads "
                f"{FORMAT_VERSION}); export the models again with this version (make models)"
            )
        manifest["_root"] = str(root)
        repo = cls(root, manifest)
        for name in SAM_MODELS:
            if name not in manifest.get("models", {}):
                raise ModelError(f"{path}: model {name} missing from the manifest")
        return repo

    @property
    def sam2(self) -> dict:
        return self.manifest["sam2"]

    @property
    def clip(self) -> dict | None:
        return self.manifest.get("clip")

    @property
    def has_clip(self) -> bool:
        return bool(self.clip) and all(n in self.manifest["models"] for n in CLIP_MODELS)

    @property
    def random_weights(self) -> bool:
        return bool(self.manifest.get("random_weights"))

    def model_path(self, name: str, kind: str = "onnx") -> Path:
        entry = self.manifest["models"].get(name)
        if entry is None:
            raise ModelError(f"{self.root}: no model {name}")
        rel = entry["path"] if kind == "onnx" else (entry.get("tensorrt") or {}).get("path")
        if not rel:
            raise ModelError(f"{self.root}: no {kind} file for {name} (run: seglabel-export trt {self.root})")
        path = self.root / rel
        if not path.is_file():
            raise ModelError(f"{path}: missing")
        return path

    def tokenizer_path(self) -> Path:
        return self.root / self.clip["tokenizer"]

    def models_info(self) -> list[dict]:
        out = []
        for key, names in (("sam2", SAM_MODELS), ("clip", CLIP_MODELS)):
            part = self.manifest.get(key)
            if not part:
                continue
            spec = part["spec"]
            for name in names:
                out.append(
                    {
                        "name": name,
                        "architecture": spec["architecture"],
                        "source": spec["source"],
                        "sha256": part["sha256"],
                        "random_weights": bool(spec["random_weights"]),
                    }
                )
        return out
