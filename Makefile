# seglabel: the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
MODELS ?= models
CHECKPOINTS ?= checkpoints
SAM2_SIZE ?= tiny
CLIP_MODEL ?= ViT-B-32
# Depth Anything V2: vits (Small, the default), vitb (Base), vitl (Large).
DEPTH_SIZE ?= vits
PORT ?= 50051
RAPIDOCR_VERSION ?= 1.4.4
TRITONCLIENT_VERSION ?= 2.73.0
DEMO_GRID ?= 12
PB_OUT := client/seglabel_api/pb
PROTO := proto/seglabel/v1/seglabel.proto

.PHONY: system-deps label-studio label-studio-start venv proto models models-smooth checkpoints demo serve redis ray-serve test test-fast lint bench bench-pipeline bench-answer bench-serial bench-scene bench-clicks bench-ray bench-memory bench-learn bench-track bench-gpu gpu-wheels soak clean

# Installs everything (serve path + export extra + dev tools) into $(VENV). Re-runs only when
# pyproject.toml changes. sam2 is a source package: build it against the installed torch.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q grpcio-tools
	$(MAKE) proto PY=$(PY)
	$(PIP) install -q -e '.[export,dev,bench,ocr,ray,dataset]'
	$(PIP) install -q --no-deps rapidocr_onnxruntime==$(RAPIDOCR_VERSION)
	# Triton's ModelConfig message, to validate the config.pbtxt files export writes (its gRPC client's
	# dependencies would pin an older protobuf; only the generated message is used).
	$(PIP) install -q --no-deps tritonclient==$(TRITONCLIENT_VERSION)
	SAM2_BUILD_CUDA=0 $(PIP) install -q --no-build-isolation sam2==1.1.0
	touch $@

venv: $(VENV)/.installed

# gRPC stubs, generated (never hand-edited) into an ignored folder.
proto: $(PB_OUT)/seglabel/v1/seglabel_pb2.py
$(PB_OUT)/seglabel/v1/seglabel_pb2.py: $(PROTO) scripts/gen_proto.py
	$(PY) scripts/gen_proto.py $(PB_OUT)

# Official checkpoints, where a network exists.
checkpoints:
	mkdir -p $(CHECKPOINTS)
	curl -fL --connect-timeout 10 --retry 2 -o $(CHECKPOINTS)/sam2.1_hiera_$(SAM2_SIZE).pt \
	  https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_$(SAM2_SIZE).pt
	curl -fL --connect-timeout 10 --retry 2 -o $(CHECKPOINTS)/ViT-B-32.pt \
	  https://openaipublic.azureedge.net/clip/models/40d3657159124abbd4f8ccb1d8cdd4ef1fd5bb5e4dc4d9b6c3fb41e5b0c9fe0e/ViT-B-32.pt
	curl -fL --connect-timeout 10 --retry 2 -o $(CHECKPOINTS)/depth_anything_v2_$(DEPTH_SIZE).pth \
	  https://huggingface.co/depth-anything/Depth-Anything-V2-$(if $(filter vits,$(DEPTH_SIZE)),Small,$(if $(filter vitb,$(DEPTH_SIZE)),Base,Large))/resolve/main/depth_anything_v2_$(DEPTH_SIZE).pth

# The model repository: official checkpoints when present (or downloadable), otherwise random
# weights of the same architectures (loudly reported by export, server and GetServerInfo). Exported
# again when the graph definitions change (the server refuses a repository of another format).
$(MODELS)/manifest.json: server/seglabel_server/models/torch_modules/modules.py server/seglabel_server/models/torch_modules/video.py export/seglabel_export/exporter.py export/seglabel_export/families.py scripts/make_models.sh | $(VENV)/.installed
	bash scripts/make_models.sh $(VENV) $(MODELS) $(CHECKPOINTS) $(SAM2_SIZE) $(DEPTH_SIZE)
models: $(MODELS)/manifest.json

serve: models
	$(VENV)/bin/seglabel-server --models $(MODELS) --port $(PORT)

# Redis for the shared upload and vocabulary stores (Debian's redis-server; make system-deps installs
# it): in the background on 127.0.0.1:$(REDIS_PORT), no persistence; past REDIS_MAXMEMORY the least
# recently used key with an expiry (uploads, kept answers) is dropped, never a vocabulary (none has one).
REDIS_PORT ?= 6379
REDIS_MAXMEMORY ?= 2gb
redis: system-deps
	@redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1 && echo "redis already on :$(REDIS_PORT)" || \
	  redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
	    --maxmemory $(REDIS_MAXMEMORY) --maxmemory-policy volatile-lru --logfile /tmp/seglabel-redis.log

# The service on Ray Serve (local cluster on this machine): replicas behind Ray's gRPC proxy on
# :$(RAY_GRPC_PORT), uploads in Redis. Ctrl-C stops it.
RAY_REPLICAS ?= 2
RAY_GRPC_PORT ?= 9000
ray-serve: models redis
	$(VENV)/bin/seglabel-ray --models $(MODELS) --replicas $(RAY_REPLICAS) --grpc-port $(RAY_GRPC_PORT) \
	  --upload-store redis://127.0.0.1:$(REDIS_PORT)/0

# Main job: server on the embedded default (ONNX Runtime, CPU) + the client on a bundled photo.
demo: models
	bash scripts/demo.sh $(VENV) $(MODELS) $(PORT) $(DEMO_GRID)

# Label Studio and its SDK, and datumaro (the dataset framework CVAT imports with), in their own venv
# (their pins would move the project's packages): the tests run a real Label Studio against seglabel's
# ML backend and read the files seglabel writes with these tools. sentry-sdk 3 breaks its start-up.
LS_VENV ?= .venv-ls
LABEL_STUDIO_VERSION ?= 1.23.2
LABEL_STUDIO_SDK_VERSION ?= 2.1.2
DATUMARO_VERSION ?= 1.13.0
$(LS_VENV)/.installed:
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q --upgrade pip
	$(LS_VENV)/bin/pip install -q "label-studio==$(LABEL_STUDIO_VERSION)" \
	  "label-studio-sdk==$(LABEL_STUDIO_SDK_VERSION)" "sentry-sdk<3" "datumaro==$(DATUMARO_VERSION)"
	touch $@
label-studio: $(LS_VENV)/.installed

# A Label Studio on a free port of 127.0.0.1 to connect seglabel to by hand (telemetry and update checks off;
# data in $(LS_DATA)); prints its URL and a personal access token.
LS_DATA ?= /tmp/seglabel-label-studio
label-studio-start: label-studio $(VENV)/.installed
	mkdir -p $(LS_DATA) && $(PY) -m tests.labelstudio $(LS_DATA)

# System packages some tests use: the distribution's Chromium (the web page's browser test, driven by
# Playwright; no browser is downloaded) and redis-server. Installed with apt when running as root
# (CI, containers); otherwise the command is printed and those tests skip, saying why.
SYSTEM_PACKAGES := chromium redis-server
system-deps:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing$$missing (apt)"; \
	  (apt-get install -y -q --no-install-recommends $$missing || \
	   (apt-get update -q && apt-get install -y -q --no-install-recommends $$missing)) >/dev/null; \
	else echo "NOTE: not installed:$$missing (sudo apt-get install$$missing); the tests that need them will skip"; fi

# Two worker processes, one test file each at a time (a file's fixtures stay in one process): much of
# the suite waits on servers, browsers and Ray, so two workers finish sooner even on two cores.
TEST_WORKERS ?= 2
PYTEST_ARGS ?=
test: $(VENV)/.installed proto system-deps label-studio
	$(VENV)/bin/python -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

# The loop while editing: unit tests and the quick integration tests (tiny models; no compilation,
# browser, Ray or full-size export: those are marked slow, the GPU's gpu). make test runs them all.
test-fast: $(VENV)/.installed proto
	$(VENV)/bin/python -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile -m "not slow and not gpu" $(PYTEST_ARGS) tests

lint: $(VENV)/.installed proto
	$(VENV)/bin/ruff check server export client tests scripts
	$(VENV)/bin/mypy

# The benchmark input with realistic masks (issue 35): the same full-size architectures, random
# weights transformed so that masks have trained-like run counts (seglabel_export.sources.smooth_masks).
MODELS_SMOOTH ?= models-smooth
$(MODELS_SMOOTH)/manifest.json: export/seglabel_export/sources.py export/seglabel_export/exporter.py export/seglabel_export/families.py server/seglabel_server/models/torch_modules/modules.py | $(VENV)/.installed
	$(VENV)/bin/seglabel-export export $(MODELS_SMOOTH) --sam2 random-smooth:$(SAM2_SIZE) --clip random:$(CLIP_MODEL) --ocr no --decoder-n 1,7
models-smooth: $(MODELS_SMOOTH)/manifest.json

bench-pipeline: models models-smooth
	$(PY) scripts/bench_pipeline.py --models $(MODELS) --smooth-models $(MODELS_SMOOTH)

# The answer path's host cost per stage (filter, upsample + RLE, crops, protobuf), both inputs, the
# ONNX Runtime host path and the torch device path (CPU torch here).
bench-answer: models models-smooth
	$(PY) scripts/bench_answer.py --inputs random=$(MODELS),smooth=$(MODELS_SMOOTH)

# A serial step across requests? The server with zero-cost models over gRPC, c=1 against c=32, with
# its threads' sampled stacks.
bench-serial: models-smooth
	$(PY) scripts/bench_serial.py --models $(MODELS_SMOOTH) --profile

# Depth and OCR latency, and what with_depth,with_text adds to a grid-16 Segment.
bench-scene: models
	$(PY) scripts/bench_scene.py --models $(MODELS)

# Clicks on an already-segmented upload (image embedding cached) vs on a fresh upload.
bench-clicks: models
	$(PY) scripts/bench_clicks.py --models $(MODELS)

# Ray Serve scaling: 1 replica x 1 CPU vs 2 replicas x 1 CPU, same load, same run.
bench-ray: models
	$(PY) scripts/bench_ray.py --models $(MODELS)

# Soak on the full-size models, default settings: a dataset job's window of requests in flight
# (distinct images, grid 16, labels) beside mixed good / cancelled / deadline / slow / bad requests.
# docs/operations.md has a 30-minute run: make soak SOAK_SECONDS=1800.
SOAK_SECONDS ?= 300
SOAK_SERVER_ARGS ?=
soak: models
	$(PY) scripts/soak.py --models $(MODELS) --duration $(SOAK_SECONDS) -- $(SOAK_SERVER_ARGS)

# Labels that learn: scoring cost of 1,000 examples for 50 masks, and Relabel's p50 on a server.
bench-learn: models
	$(PY) scripts/bench_learn.py --models $(MODELS)

# Tracking (issue 34): seglabel's tracking loop on the exported full-size video graphs (ONNX Runtime)
# against sam2's own SAM2VideoPredictor on the same random weights, frames and prompts, in the same
# run: frames/s, stages, state per object, mask IoU. sam2's side is slow here (seconds a frame).
bench-track: $(VENV)/.installed
	$(PY) scripts/bench_track.py --objects 1,3,10 --sam2-objects 1,3 --frames 10 --sizes 512,1024

# One request's memory (peak over the idle server, RSS after, the budget's estimate against the
# peak; and over the same request for 1 mask): grid 16 / 32 / 64 at 1 and 4 MP, 1000 masks, then
# grid 32 with labels.
bench-memory: models
	$(PY) scripts/bench_memory.py --models $(MODELS) --grids 16,32,64 --sizes 1000,2000 --labels off --floor
	$(PY) scripts/bench_memory.py --models $(MODELS) --grids 32 --sizes 1000 --labels on

bench: models
	bash scripts/bench_batching.sh $(VENV) $(MODELS)

bench-gpu:
	bash scripts/gpu_bench.sh $(GPU_BENCH_ARGS)

# The wheels a GPU machine without network lacks, into .whl/ (onnxruntime-gpu in parts): see gpu_wheels.sh.
gpu-wheels: $(VENV)/.installed
	PIP=$(PIP) bash scripts/gpu_wheels.sh

clean:
	rm -rf $(PB_OUT) .pytest_cache
