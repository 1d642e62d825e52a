"""One typed config object, built once at start-up from flags (and an optional JSON file).

Every ``ServerConfig`` / ``PipelineConfig`` field is a flag (``--field-name``; booleans also take
``--no-...``) and a JSON key (``"pipeline": {...}`` for the pipeline's); per-stage batch sizes are
``--max-batch-<stage>`` / ``"max_batch": {"<stage>": n}`` for every registered model kind.
Precedence: defaults < ``--config`` file < flags given explicitly. Unknown keys are refused by name.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from seglabel_server.backends.config import BackendConfig
from seglabel_server.models import kinds
from seglabel_server.niceness import BATCH_NICE
from seglabel_server.pipeline.config import PipelineConfig
from seglabel_server.scheduler import StageConfig


class ConfigError(ValueError):
    """A setting that does not exist or has the wrong type; the message names it and where it came from."""


def _opt(default, help: str, **meta):
    """A config field with its flag's help (and optional flag name / choices)."""
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"help": help, **meta}, **kw)


@dataclass
class ServerConfig:
    host: str = _opt("127.0.0.1", "address to bind (loopback by default)")
    port: int = _opt(50051, "gRPC port (0: an ephemeral port)")
    http_port: int = _opt(0, "HTTP/JSON gateway port, same host, TLS and token as gRPC (0: off; demo: 5000)")
    models: str = _opt("models", "model repository written by seglabel-export")
    backend: str = _opt("onnxruntime", "runtime", choices=("onnxruntime", "torch", "tensorrt"))
    device: str = _opt("cpu", "onnxruntime: cpu|cuda|tensorrt; torch: cpu|cuda[:N]; tensorrt: cuda[:N]")
    precision: str = _opt("fp32", "torch backend autocast on CUDA", choices=("fp32", "fp16", "bf16"))
    threads: int = _opt(0, "onnxruntime intra-op threads (0: one per core)")
    interactive_lane: bool = _opt(True, "onnxruntime on the CPU: clicks run on sessions of their own (full size: "
        "+0.7 GB), batch work's threads at nice +10: a job cannot slow a click")  # fmt: skip
    torch_compile: str = _opt(
        "none",
        "torch backend: compile every model (torch.compile; reduce-overhead adds CUDA graphs), batches "
        "padded to power-of-two buckets, all compiled before SERVING (the time is logged); aot: load the "
        "AOTInductor packages `seglabel-export aot` built (nothing compiles at start)",
        choices=("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "aot"),
    )
    ort_io_binding: str = _opt(
        "auto",
        "onnxruntime: bind inputs and outputs to the provider's memory (outputs stay on the GPU and feed "
        "the next graph by pointer); auto: on off the CPU",
        choices=("auto", "on", "off"),
    )
    mask_path: str = _opt(
        "auto", "torch backend: where per-mask work runs (filters, upsampling, RLE runs, CLIP crops): device "
        "keeps masks in the backend's memory until they are answers; host is the numpy path (auto: device on "
        "CUDA, host on the CPU, where it is faster)", choices=("auto", "device", "host"))  # fmt: skip
    decoder_layout: str = _opt(
        "auto", "torch backend: decoder calls hold prompts of one image (per-image) or of several (multi-image: "
        "requests share decoder batches); auto: multi-image on CUDA, per-image on the CPU",
        choices=("auto", "per-image", "multi-image"))  # fmt: skip
    stage_workers: str = _opt(
        "auto", "inference worker threads, as groups of stages separated by '|' (e.g. 'encoder|decoder,clip,"
        "text'; stages not named join the last group, or follow a single group as a second); one: a single "
        "worker; auto: encoder|rest for torch on CUDA (each worker its own CUDA stream, so the next batch's "
        "encoder overlaps this one's decoder and CLIP), else one")  # fmt: skip
    cpu_threads: int = _opt(0, "threads for filters, upsampling, RLE and crops (0: one per core)")
    blas_threads: int = _opt(1, "threads numpy's BLAS may use (the label scores' small products; idle BLAS "
                             "threads spin and take cores from the models and the CPU pool; 0: its default)")  # fmt: skip
    load_clip: bool = _opt(True, "load CLIP (--no-clip: segmentation only)", flag="clip")
    batching: bool = _opt(True, "merge work of different requests into one batch")
    max_queue_delay_ms: float = _opt(-1.0, "longest wait for a batch to fill (-1: the kind's default)")
    max_batch: dict[str, int] = _opt(dict, "units per batch, per stage (absent or 0: the kind's default)")
    max_queue: int = _opt(
        256, "items per stage that batches are formed from; the rest wait in order of class and admission "
        "(never refused: refusal happens at admission, --max-inflight and the memory budget)")  # fmt: skip
    priority_aging_s: float = _opt(
        20.0, "a request's class (batch, default, interactive) improves by one per this many seconds "
        "waited since admission: batch work is never starved (0: never)")  # fmt: skip
    interactive_reserve: float = _opt(
        0.25, "share of --max-inflight only interactive requests may take (batch ones also leave the default "
        "ones as much), and of the memory budget batch ones leave (default: half): a job cannot refuse a click")  # fmt: skip
    max_inflight: int = _opt(64, "requests admitted at once")
    max_image_bytes: int = _opt(32 << 20, "largest encoded image accepted")
    max_image_pixels: int = _opt(40_000_000, "largest decoded image accepted (width x height)")
    upload_store: str = _opt(
        "memory",
        "where uploads live: memory (this process), disk:PATH (survives restarts; several processes "
        "may share it) or redis://host:port/db (shared by replicas)",
    )
    upload_cache_mb: int = _opt(512, "uploads kept in memory / on disk (least recently used dropped past it)")
    upload_ttl_s: int = _opt(86400, "redis upload store: an upload expires this long after its last use")
    embedding_cache_mb: int = _opt(
        256,
        "image embeddings (SAM2 encoder outputs, 16 MB per image for hiera at 1024 px) kept by image sha256, "
        "least recently used dropped past this; clicks on a seen image skip the encoder (0: off)",
    )
    vocabulary_store: str = _opt(
        "",
        "where named vocabularies live: memory, disk:PATH or redis://host:port/db (empty: the upload "
        "store's choice; disk:PATH keeps them in PATH/vocabularies)",
    )
    max_vocabularies: int = _opt(1000, "vocabularies stored at most")
    max_examples_per_label: int = _opt(1000, "examples one label of a vocabulary may hold")
    max_vocabulary_mb: int = _opt(
        64, "largest vocabulary record (labels, prompts, example embeddings and their sources: a mask's RLE)"
    )
    answer_cache_mb: int = _opt(
        64,
        "recent answers' crop embeddings kept for Relabel and AddExamples(request_id), 2 KB per mask "
        "(ViT-B-32), least recently used dropped past this (0: off)",
    )
    answer_ttl_s: int = _opt(
        3600,
        "redis upload store: kept answers are also written there (any replica relabels them) for this long",
    )
    max_memory_mb: int = _opt(
        0, "memory budget for requests in flight, each charged its peak bound (0: half the machine's memory)"
    )
    cpu_arena: bool = _opt(
        True,
        "onnxruntime: one CPU memory arena shared by every model (about 1.5x faster per request than "
        "without it, measured; it keeps its peak until the server is idle for --idle-release-s)",
    )
    idle_release_s: float = _opt(
        2.0,
        "once no request has been in flight for this long, give memory back to the OS (the C heap's free "
        "pages; the CPU arena beyond one image's working memory, see --keep-working-set); under load it is "
        "kept for the next requests",
    )
    keep_working_set: bool = _opt(
        True,
        "onnxruntime on the CPU: when memory is given back (--idle-release-s), keep the arena at one image's "
        "working memory (one encoder run refills it): requests start warm and peak ~0.9 GB lower (full-size "
        "models), the idle server holds ~0.7 GB more; --no-keep-working-set gives everything back",
    )
    arena_shrinkage: bool = _opt(
        False,
        "onnxruntime: free the CPU arena's unused chunks after each run (bounds RSS after bursts: 1.04x of warm "
        "in a 5-min soak, vs 1.40x without; costs ~20-25%% per request on 2 cores)",
    )
    drain_seconds: float = _opt(30.0, "on SIGTERM/SIGINT: time in-flight requests get to finish")
    stream_stall_s: float = _opt(30.0, "end a stream whose client has read nothing for this long")
    tls_cert: str = _opt("", "PEM certificate chain: serve TLS (with --tls-key)")
    tls_key: str = _opt("", "PEM private key of --tls-cert")
    tls_client_ca: str = _opt("", "PEM CA bundle: require client certificates signed by it (mTLS)")
    auth_token_file: str = _opt("", "file holding the bearer token every call but health must present")
    insecure: bool = _opt(False, "allow a non-loopback address without TLS and a token (not recommended)")
    metrics_port: int = _opt(0, "serve Prometheus metrics on this port (0: off)")
    label_studio_url: str = _opt("", "Label Studio's URL, when /setup did not say it ($LABEL_STUDIO_URL)")
    label_studio_api_key_file: str = _opt("", "file with Label Studio's API key ($LABEL_STUDIO_API_KEY)")
    label_studio_predict_s: float = _opt(30.0, "Label Studio's /predict answers in this; the rest is posted")
    warmup: bool = _opt(True, "run one request through every model before reporting SERVING")
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def backend_config(self) -> BackendConfig:
        """The backend's settings, with each model's largest batch (the scheduler's, per stage)."""
        return BackendConfig(
            backend=self.backend,
            device=self.device,
            precision=self.precision,
            threads=self.threads,
            cpu_arena=self.cpu_arena,
            arena_shrinkage=self.arena_shrinkage,
            io_binding={"auto": None, "on": True, "off": False}[self.ort_io_binding],
            batch_nice=BATCH_NICE if self.interactive_lane and self.backend == "onnxruntime" else 0,
            mask_path=self.mask_path,
            decoder_layout=self.decoder_layout,
            compile_mode=self.torch_compile,
            max_batches={kinds.get(s).model: c.max_batch_size for s, c in self.stage_configs().items()},
        )

    def stage_configs(self) -> dict[str, StageConfig]:
        """One StageConfig per registered kind, in priority order."""
        unknown = set(self.max_batch) - {k.name for k in kinds.all_kinds()}
        if unknown:
            raise ValueError(f"max_batch: no stage {sorted(unknown)}")
        out = {}
        for kind in kinds.all_kinds():
            size = self.max_batch.get(kind.name) or kind.default_max_batch(self.device.split(":")[0])
            delay = kind.max_queue_delay_ms if self.max_queue_delay_ms < 0 else self.max_queue_delay_ms
            out[kind.name] = StageConfig(size, delay, self.max_queue)
        return out

    def worker_groups(self, stages: list[str]) -> list[list[str]]:
        """``stage_workers`` resolved against the stages this server runs (see the flag's help)."""
        spec = self.stage_workers
        if spec == "auto":
            # The torch backend gives each worker thread its own CUDA stream; CUDA graphs (compiled
            # reduce-overhead / max-autotune) are recorded per thread, so with them: one worker.
            graphs = self.torch_compile in ("reduce-overhead", "max-autotune")
            torch_gpu = self.backend == "torch" and self.device.startswith("cuda")
            spec = "encoder" if torch_gpu and not graphs else "one"
        if spec == "one":
            return [list(stages)]
        groups = [[s.strip() for s in g.split(",") if s.strip()] for g in spec.split("|")]
        unknown = {s for g in groups for s in g} - {k.name for k in kinds.all_kinds()}
        if unknown:
            raise ValueError(f"stage_workers: no stage {sorted(unknown)}")
        named = {s for g in groups for s in g}
        groups = [[s for s in g if s in stages] for g in groups]
        rest = [s for s in stages if s not in named]
        if rest and len(groups) == 1:  # "encoder": the encoder alone, everything else together
            groups.append(rest)
        elif rest:
            groups[-1].extend(rest)
        return [g for g in groups if g]


# ------------------------------------------------------------------------------------------ flags
def _flag_type(tp):
    if tp is bool:
        return None
    if tp in (int, float, str):
        return tp
    if typing.get_origin(tp) is tuple:
        return lambda s: tuple(v.strip() for v in s.split(",") if v.strip())
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _flag_type(inner[0])
    return None


def _add_fields(parser: argparse.ArgumentParser, cls, prefix: str, exclude: frozenset = frozenset()) -> None:
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(prefix.rstrip(".") or "server")
    for f in fields(cls):
        tp = hints[f.name]
        if f.name in exclude:
            continue
        if tp is not bool and _flag_type(tp) is None:
            continue  # nested sections and per-stage dicts have flags of their own
        name = "--" + f.metadata.get("flag", f.name).replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()
        text = f.metadata.get("help", "") + f" (default: {default})"
        kw = dict(dest=prefix + f.name, default=argparse.SUPPRESS, help=text)
        if tp is bool:
            group.add_argument(name, action=argparse.BooleanOptionalAction, **kw)
        else:
            group.add_argument(
                name, type=_flag_type(tp), choices=f.metadata.get("choices"), metavar=f.name.upper(), **kw
            )


def add_flags(p: argparse.ArgumentParser, exclude: frozenset = frozenset()) -> None:
    """Every setting as a flag on ``p``: ``--config FILE``, each ServerConfig and PipelineConfig
    field (but ``exclude``), and ``--max-batch-<stage>`` per registered model kind
    (``seglabel-server`` and ``seglabel-ray`` both take them)."""
    p.add_argument("--config", help="JSON file with ServerConfig fields (flags given explicitly win)")
    _add_fields(p, ServerConfig, "", exclude)
    _add_fields(p, PipelineConfig, "pipeline.")
    group = p.add_argument_group("stages (one per model kind)")
    for kind in kinds.all_kinds():
        group.add_argument(
            f"--max-batch-{kind.name.replace('_', '-')}",
            dest=f"max_batch.{kind.name}",
            type=int,
            metavar="N",
            default=argparse.SUPPRESS,
            help=f"{kind.description or kind.model}: units per batch (default {kind.max_batch}"
            + (f", {kind.max_batch_gpu} off the CPU)" if kind.max_batch_gpu else ")"),
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seglabel-server", description="SAM2 + CLIP segment-and-label gRPC server"
    )
    p.add_argument("--log-level", default="INFO")
    add_flags(p)
    return p


# ------------------------------------------------------------------------------------------- file
def _coerce(cls, name: str, value, where: str):
    tp = typing.get_type_hints(cls)[name]
    if typing.get_origin(tp) is tuple and isinstance(value, list):
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def apply_settings(cfg: ServerConfig, data: dict, where: str) -> None:
    """``data`` (a --config file's object, or Ray's ``args.server``) set on ``cfg``; an unknown key
    or a malformed section raises :class:`ConfigError` naming it and ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    known = {f.name for f in fields(ServerConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown settings {unknown}")
    for key, value in data.items():
        if key == "pipeline":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: pipeline must be an object")
            bad = sorted(set(value) - {f.name for f in fields(PipelineConfig)})
            if bad:
                raise ConfigError(f"{where}: unknown settings in pipeline {bad}")
            for k, v in value.items():
                setattr(cfg.pipeline, k, _coerce(PipelineConfig, k, v, where))
        elif key == "max_batch":
            stages = {k.name for k in kinds.all_kinds()}
            bad = sorted(set(value) - stages) if isinstance(value, dict) else ["(not an object)"]
            if bad:
                raise ConfigError(f"{where}: unknown settings in max_batch {bad} (stages: {sorted(stages)})")
            cfg.max_batch.update({k: int(v) for k, v in value.items()})
        else:
            setattr(cfg, key, _coerce(ServerConfig, key, value, where))


def settings_from_args(args: argparse.Namespace) -> dict:
    """The settings of a parsed command line (:func:`add_flags`), as one JSON-able object: the
    ``--config`` file's, then the flags given explicitly on top. Raises ConfigError."""
    data: dict = {}
    if getattr(args, "config", None):
        try:
            data = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{args.config}: cannot read ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{args.config}: expected a JSON object")
    known = {f.name for f in fields(ServerConfig)}
    for dest, value in vars(args).items():
        value = list(value) if isinstance(value, tuple) else value
        section, _, name = dest.rpartition(".")
        if section in ("pipeline", "max_batch"):
            given = data.get(section)
            data[section] = {**(given if isinstance(given, dict) else {}), name: value}
        elif dest in known:
            data[dest] = value
    return data


def config_from_args(argv: list[str] | None = None) -> tuple[ServerConfig, argparse.Namespace]:
    """``seglabel-server``'s command line: defaults < ``--config`` file < flags given explicitly."""
    args = build_parser().parse_args(argv)
    cfg = ServerConfig()
    try:
        apply_settings(cfg, settings_from_args(args), args.config or "the command line")
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    return cfg, args
