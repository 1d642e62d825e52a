"""When work runs and in which batch: per-stage queues, batches formed by pure functions
(:mod:`.batching`), inference worker threads that run them on the backend (:mod:`.scheduler`)."""

from seglabel_server.scheduler.batching import StageConfig, WorkItem, collate_batch, pick_stage
from seglabel_server.scheduler.scheduler import BatchExecutor, Scheduler

__all__ = ["BatchExecutor", "Scheduler", "StageConfig", "WorkItem", "collate_batch", "pick_stage"]
