# The Docker fork's workflow of torch-rnn-server, with one image (docker/Dockerfile) and podman or docker:
#
#   make image                                  build the CPU image (every tool, TensorFlow)
#   make image-serve                            build the serving image: bin/serve and bin/sample of a .tflite, no TensorFlow
#   make preprocess CORPUS=tiny-shakespeare     data/tiny-shakespeare.txt -> data/generated/tiny-shakespeare.{h5,json}
#   make train                                  train in the background -> data/checkpoints/tiny-shakespeare_*
#   make train-logs / train-stop / train-start  follow it; stop it (a checkpoint is saved); go on from there
#   make sample                                 print a sample of the best checkpoint
#   make export                                 data/export/tiny-shakespeare/V (TF Serving, TFLite)
#   make serve                                  bin/serve on http://127.0.0.1:8080 (/write, /generate, /v1, /api)
#   make serve-lite                             the same from the serving image, of the export's model.tflite
#   make serve-stop
#
# Make targets rather than a compose file: the workflow is a sequence of steps, each of which must finish
# before the next starts (compose describes services that run side by side), and make with the engine's own
# command line works the same with podman and docker, with nothing more installed.
#
# Settings (make VAR=value): CORPUS names data/$(CORPUS).txt; MODEL names the checkpoints and the served model
# (default: the corpus's name); both are names (letters, digits, '.', '_', '-'). DATA is the directory mounted at
# /data (any path, spaces too). TRAIN_FLAGS, SAMPLE_FLAGS, SERVE_FLAGS go to the tools, split into words and
# nothing more (no shell in them runs). PORT is the host's port for serve, published on 127.0.0.1 only
# (PUBLISH='-p 8080:8080' opens it to the network: give SERVE_FLAGS='--api_key_file /data/key' then).
# Containers run as your user (USER_FLAGS; under sudo, the user who ran sudo; rootless podman keeps your ids
# inside with --userns=keep-id), so the files in data/ are yours; USER_FLAGS= runs them as the image's own user
# (uid 1000), which must then own data/.
#
# Every value reaches the recipes through the environment and is used as a shell variable ("$$NAME"), never
# pasted into the command text: a ';' or a backquote in a value is a character of an argument, not a command.

ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
ENGINE_FLAGS ?=
BASE ?= python:3.12-slim
IMAGE ?= localhost/kerascharrnn:cpu
SERVE_IMAGE ?= localhost/kerascharrnn:serve
GPU_IMAGE ?= localhost/kerascharrnn:gpu
BUILD_FLAGS ?=
DATA ?= $(CURDIR)/data
CORPUS ?= tiny-shakespeare
MODEL ?= $(CORPUS)
PORT ?= 8080
PUBLISH ?= -p 127.0.0.1:$(PORT):8080
HOST_UID := $(or $(SUDO_UID),$(shell id -u))
HOST_GID := $(or $(SUDO_GID),$(shell id -g))
USERNS := $(shell [ "$$(basename '$(ENGINE)')" = podman ] && [ "$(HOST_UID)" != 0 ] && [ "$$(id -u)" != 0 ] && echo --userns=keep-id)
USER_FLAGS ?= --user $(HOST_UID):$(HOST_GID) $(USERNS)
TRAIN_FLAGS ?= --max_epochs 50
SAMPLE_FLAGS ?= --length 500 --temperature 0.8
SERVE_FLAGS ?=
STOP_SECONDS ?= 120

export ENGINE ENGINE_FLAGS BASE IMAGE SERVE_IMAGE GPU_IMAGE BUILD_FLAGS DATA CORPUS MODEL PORT PUBLISH USER_FLAGS TRAIN_FLAGS \
	SAMPLE_FLAGS SERVE_FLAGS STOP_SECONDS

# Each recipe line starts with this: no globbing of the flags' words, CORPUS and MODEL checked to be names.
CHECKED = set -f; case "$$CORPUS$$MODEL" in *[!A-Za-z0-9._-]*|"") \
	echo "make: CORPUS and MODEL must be names (letters, digits, '.', '_', '-'): got '$$CORPUS', '$$MODEL'" >&2; \
	exit 2;; esac;
RUN = "$$ENGINE" $$ENGINE_FLAGS run --rm -v "$$DATA:/data" $$USER_FLAGS

.PHONY: image image-serve image-gpu preprocess train train-logs train-stop train-start sample export serve serve-lite \
	serve-stop

image:
	$(CHECKED) "$$ENGINE" $$ENGINE_FLAGS build $$BUILD_FLAGS --build-arg "BASE=$$BASE" -f docker/Dockerfile -t "$$IMAGE" .

# The package's [lite] install: LiteRT and the server, no TensorFlow (a fraction of the CPU image's size).
image-serve:
	$(CHECKED) "$$ENGINE" $$ENGINE_FLAGS build $$BUILD_FLAGS --build-arg "BASE=$$BASE" --build-arg EXTRAS=lite \
		--build-arg VARIANT=serve -f docker/Dockerfile -t "$$SERVE_IMAGE" .

# Written and documented; not built by this project's checks (no GPU there).
image-gpu:
	$(CHECKED) "$$ENGINE" $$ENGINE_FLAGS build $$BUILD_FLAGS --build-arg "BASE=$$BASE" --build-arg EXTRAS=tf,serve,gpu \
		--build-arg VARIANT=gpu -f docker/Dockerfile -t "$$GPU_IMAGE" .

preprocess:
	$(CHECKED) mkdir -p "$$DATA/generated" "$$DATA/checkpoints" && \
	$(RUN) "$$IMAGE" preprocess --input_txt "/data/$$CORPUS.txt" --output_h5 "/data/generated/$$CORPUS.h5" \
		--output_json "/data/generated/$$CORPUS.json"

# --resume_from auto: the first start begins a run, every later start (train-start, or `make train` again after
# the container was removed) continues the newest checkpoint.
train:
	$(CHECKED) "$$ENGINE" $$ENGINE_FLAGS run -d --name "$$MODEL-train" --stop-timeout "$$STOP_SECONDS" \
		-v "$$DATA:/data" $$USER_FLAGS "$$IMAGE" train --input_h5 "/data/generated/$$CORPUS.h5" \
		--input_json "/data/generated/$$CORPUS.json" --checkpoint_name "/data/checkpoints/$$MODEL" \
		--resume_from auto $$TRAIN_FLAGS

train-logs:
	$(CHECKED) "$$ENGINE" $$ENGINE_FLAGS logs -f "$$MODEL-train"

# A stop is a SIGTERM: bin/train saves a checkpoint, then exits.
train-stop:
	$(CHECKED) "$$ENGINE" $$ENGINE_FLAGS stop -t "$$STOP_SECONDS" "$$MODEL-train"

train-start:
	$(CHECKED) "$$ENGINE" $$ENGINE_FLAGS start "$$MODEL-train"

sample:
	$(CHECKED) $(RUN) "$$IMAGE" sample --checkpoint "/data/checkpoints/$${MODEL}_best.keras" $$SAMPLE_FLAGS

export:
	$(CHECKED) $(RUN) "$$IMAGE" export --checkpoint "/data/checkpoints/$${MODEL}_best.keras" --export_dir /data/export \
		--model_name "$$MODEL" --tflite

# The server listens on every interface inside the container; PUBLISH decides who reaches it from outside.
# Published on the host's loopback, it answers only requests sent to this machine's names (a web page on another
# name that resolves to 127.0.0.1 could otherwise read its replies); SERVE_FLAGS='--allowed_hosts NAME' adds one.
# serve-lite: the serving image, of the newest export's model.tflite (make export writes it); the same APIs.
serve: SERVED = "$$IMAGE" serve --checkpoint "/data/checkpoints/$${MODEL}_best.keras"
serve-lite: SERVED = "$$SERVE_IMAGE" serve --tflite "/data/export/$$MODEL"
serve serve-lite:
	$(CHECKED) hosts=; case "$$PUBLISH" in *127.0.0.1:*) hosts="--allowed_hosts local";; esac; \
	"$$ENGINE" $$ENGINE_FLAGS run -d --name "$$MODEL-serve" $$PUBLISH -v "$$DATA:/data" $$USER_FLAGS \
		$(SERVED) $$hosts $$SERVE_FLAGS && \
	case "$$PUBLISH$$SERVE_FLAGS" in *127.0.0.1:*|*network=host*|*api_key*) ;; *) \
		echo "make $@: warning: published on every interface ($$PUBLISH) without --api_key: anyone who can" \
		     "reach port $$PORT can use the model; give SERVE_FLAGS='--api_key_file /data/KEYFILE'" >&2;; esac

serve-stop:
	$(CHECKED) "$$ENGINE" $$ENGINE_FLAGS stop -t 10 "$$MODEL-serve" && "$$ENGINE" $$ENGINE_FLAGS rm "$$MODEL-serve"
