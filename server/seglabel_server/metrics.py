"""Prometheus metrics, in the spirit of Triton's names (inference count vs execution count...).
Each server owns its registry, so several servers (tests) can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.request_success = Counter(
            "seglabel_request_success", "Requests answered OK", ["method"], registry=r
        )
        self.request_failure = Counter(
            "seglabel_request_failure", "Requests failed", ["method", "code"], registry=r
        )
        self.request_seconds = Histogram(
            "seglabel_request_duration_seconds",
            "End-to-end request time",
            ["method"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "seglabel_queue_duration_seconds",
            "Time an item waited in its stage queue",
            ["stage"],
            buckets=_LATENCY,
            registry=r,
        )
        self.class_queue_seconds = Histogram(
            "seglabel_class_queue_duration_seconds",
            "Time an item waited in its stage queue, by its request's class",
            ["stage", "priority"],
            buckets=_LATENCY,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "seglabel_compute_duration_seconds",
            "Time of one batch on the backend",
            ["stage"],
            buckets=_LATENCY,
            registry=r,
        )
        self.inferences = Counter(
            "seglabel_inference_count",
            "Units inferred (images, prompts, crops, texts)",
            ["stage"],
            registry=r,
        )
        self.executions = Counter("seglabel_execution_count", "Batches executed", ["stage"], registry=r)
        self.batch_size = Histogram(
            "seglabel_batch_size", "Units per executed batch", ["stage"], buckets=_SIZES, registry=r
        )
        self.requests_per_batch = Histogram(
            "seglabel_batch_items",
            "Work items (request parts) per batch",
            ["stage"],
            buckets=_SIZES,
            registry=r,
        )
        self.queue_depth = Gauge(
            "seglabel_queue_depth", "Items in a stage's batching window", ["stage"], registry=r
        )
        self.class_queue_depth = Gauge(
            "seglabel_class_queue_depth",
            "Items waiting in a stage (window and backlog), by their request's class",
            ["stage", "priority"],
            registry=r,
        )
        self.class_oldest_wait = Gauge(
            "seglabel_class_queue_oldest_wait_seconds",
            "How long the oldest item waiting in a stage has waited, by its request's class",
            ["stage", "priority"],
            registry=r,
        )
        self.backlog_depth = Gauge(
            "seglabel_backlog_depth",
            "Items of admitted requests waiting for room in a stage's batching window",
            ["stage"],
            registry=r,
        )
        self.rejected = Counter(
            "seglabel_rejected",
            "Requests refused at the door (stage 'admission': the in-flight limit; 'memory': the budget)",
            ["stage"],
            registry=r,
        )
        self.dropped = Counter(
            "seglabel_dropped", "Items dropped (cancelled / deadline) or failed", ["stage"], registry=r
        )

        self.http_requests = Counter(
            "seglabel_http_requests",
            "HTTP gateway requests by route and status (499: the client went away first)",
            ["route", "status"],
            registry=r,
        )
        self.inflight = Gauge("seglabel_requests_in_flight", "Requests admitted and not finished", registry=r)
        self.budget_used = Gauge(
            "seglabel_memory_budget_used_bytes",
            "Peak-memory bounds charged by requests in flight",
            registry=r,
        )
        self.arena_images = Gauge(
            "seglabel_memory_arena_images",
            "Images' working memory the models' host arena holds between requests (each charged once)",
            registry=r,
        )
        self.arena_bytes = Gauge(
            "seglabel_memory_arena_held_bytes",
            "Budget bytes the models' host arena holds between requests (part of the budget used)",
            registry=r,
        )
        self.tasks = Gauge("seglabel_asyncio_tasks", "asyncio tasks alive in the server's loop", registry=r)
        self.embedding_hits = Counter(
            "seglabel_embedding_cache_hits",
            "Requests whose image embedding was cached (encoder skipped)",
            registry=r,
        )
        self.embedding_misses = Counter(
            "seglabel_embedding_cache_misses", "Requests whose image went through the encoder", registry=r
        )
        self.embedding_bytes = Gauge(
            "seglabel_embedding_cache_bytes", "Bytes of cached image embeddings", registry=r
        )
        self.track_sessions = Gauge("seglabel_track_sessions", "Tracking sessions open", registry=r)
        self.track_frames = Counter(
            "seglabel_track_frames", "Frames answered by tracking sessions", registry=r
        )
        self.track_expired = Counter(
            "seglabel_track_sessions_expired",
            "Tracking sessions ended for waiting past --track-idle-s",
            registry=r,
        )

    def value(self, name: str, **labels) -> float:
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v
