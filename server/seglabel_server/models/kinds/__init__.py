"""The registry of model kinds. The built-in kinds (SAM2 encoder and decoder, SAM2's video path, CLIP
image and text towers, Depth Anything V2, rapidocr's detection / orientation / recognition) register on import; another kind is one :func:`register` call (see ``kinds/base.py``)."""

from __future__ import annotations

from seglabel_server.models.kinds.base import ModelKind

_KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    """Add ``kind``; its stage name and model name must be new."""
    for other in _KINDS.values():
        if other.name == kind.name or other.model == kind.model:
            raise ValueError(f"model kind {kind.name!r} ({kind.model}) clashes with {other.name!r}")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _KINDS.pop(name, None)


def all_kinds() -> list[ModelKind]:
    """Every registered kind, highest priority (lowest number) first."""
    return sorted(_KINDS.values(), key=lambda k: k.priority)


def get(name: str) -> ModelKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"no model kind {name!r} (registered: {', '.join(_KINDS)})") from None


def for_model(model: str) -> ModelKind:
    for kind in _KINDS.values():
        if kind.model == model:
            return kind
    raise KeyError(f"no model kind runs {model!r}")


def _register_builtin() -> None:
    from seglabel_server.models.kinds import clip, depth, ocr, sam2, video

    for kind in (*sam2.KINDS, *video.KINDS, *clip.KINDS, *depth.KINDS, *ocr.KINDS):
        register(kind)


_register_builtin()

__all__ = ["ModelKind", "register", "unregister", "all_kinds", "get", "for_model"]
