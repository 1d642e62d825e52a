"""A task as the backend reads it (its image reference under the config's data key), its errors,
and the config as Label Studio takes it."""

from __future__ import annotations

import logging
from typing import Any

from seglabel_api.formats import labelstudio as ls

from seglabel_server.errors import InvalidArgument, SeglabelError
from seglabel_server.transport.http.labelstudio.connection import Unreachable

log = logging.getLogger(__name__)


class TaskFailed(Exception):
    """One task could not be predicted; the others go on."""


def parse(config) -> ls.LabelingConfig:
    try:
        return ls.parse_config(config)
    except ls.ConfigError as exc:
        raise InvalidArgument(f"labeling config: {exc}") from None


def task_ref(task, control: ls.Control) -> tuple[Any, str]:
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise TaskFailed("a task must be an object with 'data'")
    ref = task["data"].get(control.key)
    if not isinstance(ref, str) or not ref:
        raise TaskFailed(f"task {task.get('id')}: no image under data.{control.key}")
    return task.get("id"), ref


def task_error(exc: BaseException | None) -> str:
    if isinstance(exc, (TaskFailed, Unreachable, SeglabelError)):
        return str(exc)
    log.exception("label studio task failed", exc_info=exc)
    return f"internal error ({type(exc).__name__})"
