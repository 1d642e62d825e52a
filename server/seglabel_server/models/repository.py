"""Read a model repository written by ``seglabel-export`` (manifest + Triton-style folders).

Which models the repository must and may hold comes from the registered model kinds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from seglabel_server.errors import ModelError
from seglabel_server.models import kinds

MANIFEST_NAME = "manifest.json"
TOKENIZER_FILE = "bpe_simple_vocab_16e6.txt.gz"
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
        for kind in kinds.all_kinds():
            if kind.required and kind.model not in manifest.get("models", {}):
                raise ModelError(f"{path}: model {kind.model} missing from the manifest")
        return cls(root, manifest)

    @property
    def sam2(self) -> dict:
        return self.manifest["sam2"]

    @property
    def clip(self) -> dict | None:
        return self.manifest.get("clip")

    def has_family(self, family: str) -> bool:
        """The manifest describes ``family`` and holds every model its kinds run."""
        models = [k.model for k in kinds.all_kinds() if k.family == family]
        return bool(models) and all(m in self.manifest.get("models", {}) for m in models)

    @property
    def has_clip(self) -> bool:
        return bool(self.clip) and self.has_family("clip")

    def available_models(self, families: set[str] | None = None) -> list[str]:
        """Models of the repository that a registered kind runs (of ``families`` when given), in
        the kinds' priority order; a family whose models are not all present is left out whole."""
        return [
            k.model
            for k in kinds.all_kinds()
            if self.has_family(k.family) and (families is None or k.family in families)
        ]

    @property
    def random_weights(self) -> bool:
        return bool(self.manifest.get("random_weights"))

    def model_entry(self, name: str) -> dict:
        entry = self.manifest.get("models", {}).get(name)
        if entry is None:
            raise ModelError(f"{self.root}: no model {name}")
        return entry

    def model_path(self, name: str, kind: str = "onnx") -> Path:
        entry = self.model_entry(name)
        rel = entry.get("path") if kind == "onnx" else (entry.get("tensorrt") or {}).get("path")
        if not rel:
            hint = f" (run: seglabel-export trt {self.root})" if kind == "tensorrt" else ""
            raise ModelError(f"{self.root}: no {kind} file for {name}{hint}")
        path = self.root / rel
        if not path.is_file():
            raise ModelError(f"{path}: missing")
        return path

    def tokenizer_path(self) -> Path:
        return self.root / self.clip["tokenizer"]

    def models_info(self, names: list[str] | None = None) -> list[dict]:
        """What ``GetServerInfo`` says of each model (default: every model a kind runs here): its
        family's spec in the manifest, or the model entry's own fields."""
        out = []
        for name in self.available_models() if names is None else names:
            kind = kinds.for_model(name)
            family = self.manifest.get(kind.family) or {}
            spec = family.get("spec") or self.model_entry(name)
            out.append(
                {
                    "name": name,
                    "architecture": str(spec.get("architecture", kind.name)),
                    "source": str(spec.get("source", "")),
                    "sha256": str(family.get("sha256", self.model_entry(name).get("sha256", ""))),
                    "random_weights": bool(spec.get("random_weights", self.random_weights)),
                }
            )
        return out
