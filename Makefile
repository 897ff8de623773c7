# The Docker fork's workflow of torch-rnn-server, with one image (docker/Dockerfile) and podman or docker:
#
#   make image                                  build the CPU image
#   make preprocess CORPUS=tiny-shakespeare     data/tiny-shakespeare.txt -> data/generated/tiny-shakespeare.{h5,json}
#   make train                                  train in the background -> data/checkpoints/tiny-shakespeare_*
#   make train-logs / train-stop / train-start  follow it; stop it (a checkpoint is saved); go on from there
#   make sample                                 print a sample of the best checkpoint
#   make export                                 data/export/tiny-shakespeare/V (TF Serving, TFLite)
#   make serve                                  bin/serve on http://127.0.0.1:8080 (/write, /generate, /v1, /api)
#   make serve-stop
#
# Make targets rather than a compose file: the workflow is a sequence of steps, each of which must finish
# before the next starts (compose describes services that run side by side), and make with the engine's own
# command line works the same with podman and docker, with nothing more installed.
#
# Settings (make VAR=value): CORPUS names data/$(CORPUS).txt; MODEL names the checkpoints and the served model
# (default: the corpus's name); DATA is the directory mounted at /data; TRAIN_FLAGS, SAMPLE_FLAGS, SERVE_FLAGS
# go to the tools; PORT is the host's port for serve. Containers run as your user (USER_FLAGS), so the files
# in data/ are yours; USER_FLAGS= runs them as the image's own user (uid 1000), which must then own data/.

ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
ENGINE_FLAGS ?=
BASE ?= python:3.12-slim
IMAGE ?= localhost/kerascharrnn:cpu
GPU_IMAGE ?= localhost/kerascharrnn:gpu
BUILD_FLAGS ?=
DATA ?= $(CURDIR)/data
CORPUS ?= tiny-shakespeare
MODEL ?= $(CORPUS)
PORT ?= 8080
PUBLISH ?= -p $(PORT):8080
USER_FLAGS ?= --user $(shell id -u):$(shell id -g)
TRAIN_FLAGS ?= --max_epochs 50
SAMPLE_FLAGS ?= --length 500 --temperature 0.8
SERVE_FLAGS ?=
STOP_SECONDS ?= 120

GENERATED = /data/generated/$(CORPUS)
CHECKPOINT = /data/checkpoints/$(MODEL)
RUN = $(ENGINE) $(ENGINE_FLAGS) run --rm -v $(DATA):/data $(USER_FLAGS)

.PHONY: image image-gpu preprocess train train-logs train-stop train-start sample export serve serve-stop

image:
	$(ENGINE) $(ENGINE_FLAGS) build $(BUILD_FLAGS) --build-arg BASE=$(BASE) -f docker/Dockerfile -t $(IMAGE) .

# Written and documented; not built by this project's checks (no GPU there).
image-gpu:
	$(ENGINE) $(ENGINE_FLAGS) build $(BUILD_FLAGS) --build-arg BASE=$(BASE) --build-arg EXTRAS=serve,gpu \
		--build-arg VARIANT=gpu -f docker/Dockerfile -t $(GPU_IMAGE) .

preprocess:
	mkdir -p $(DATA)/generated $(DATA)/checkpoints
	$(RUN) $(IMAGE) preprocess --input_txt /data/$(CORPUS).txt --output_h5 $(GENERATED).h5 \
		--output_json $(GENERATED).json

# --resume_from auto: the first start begins a run, every later start (train-start, or `make train` again after
# the container was removed) continues the newest checkpoint.
train:
	$(ENGINE) $(ENGINE_FLAGS) run -d --name $(MODEL)-train --stop-timeout $(STOP_SECONDS) -v $(DATA):/data \
		$(USER_FLAGS) $(IMAGE) train --input_h5 $(GENERATED).h5 --input_json $(GENERATED).json \
		--checkpoint_name $(CHECKPOINT) --resume_from auto $(TRAIN_FLAGS)

train-logs:
	$(ENGINE) $(ENGINE_FLAGS) logs -f $(MODEL)-train

# A stop is a SIGTERM: bin/train saves a checkpoint, then exits.
train-stop:
	$(ENGINE) $(ENGINE_FLAGS) stop -t $(STOP_SECONDS) $(MODEL)-train

train-start:
	$(ENGINE) $(ENGINE_FLAGS) start $(MODEL)-train

sample:
	$(RUN) $(IMAGE) sample --checkpoint $(CHECKPOINT)_best.keras $(SAMPLE_FLAGS)

export:
	$(RUN) $(IMAGE) export --checkpoint $(CHECKPOINT)_best.keras --export_dir /data/export --model_name $(MODEL)

serve:
	$(ENGINE) $(ENGINE_FLAGS) run -d --name $(MODEL)-serve $(PUBLISH) -v $(DATA):/data $(USER_FLAGS) $(IMAGE) \
		serve --checkpoint $(CHECKPOINT)_best.keras $(SERVE_FLAGS)

serve-stop:
	$(ENGINE) $(ENGINE_FLAGS) stop -t 10 $(MODEL)-serve && $(ENGINE) $(ENGINE_FLAGS) rm $(MODEL)-serve
