#!/usr/bin/env bash
# Builds the CPU image and the serving image (docker/Dockerfile; `make image`, `make image-serve`) and runs the
# whole container workflow through the Makefile's targets, as a user would, on a tiny corpus (some of the Python
# standard library's sources): preprocess, a short training stopped (SIGTERM) and started again (it resumes),
# sample, export, serve, then requests from the host to /generate, the writing page and the completion APIs; then
# the serving image (no TensorFlow in it) serves the export's model.tflite to the same requests. Prints the two
# images' sizes and each step's time; exits non-zero on any failure. Needs podman (or docker) and make; not part
# of the test suite.
#
#   bash scripts/check_containers.sh
#
# Settings from the environment: ENGINE (podman or docker; default: whichever is installed), BASE (the base
# image; default: python:3.12-slim if it can be had, else one made from Debian's archive with debootstrap, as
# ../shared/CONTAINERS-NOTES.md says for a machine without an image registry), KEEP=1 keeps the work directory.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# Any command that fails outside a step says where, and what it was: the script never stops without a line.
trap 'echo "check_containers: FAILED at line $LINENO (exit $?): $BASH_COMMAND" >&2' ERR

ENGINE=${ENGINE:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}
command -v "$ENGINE" >/dev/null || { echo "check_containers: error: neither podman nor docker is installed" >&2; exit 1; }
command -v make >/dev/null || { echo "check_containers: error: make is not installed" >&2; exit 1; }
WORK=$(mktemp -d)
DATA=$WORK/data
IMAGE=localhost/kerascharrnn-check:cpu
SERVE_IMAGE=localhost/kerascharrnn-check:serve
MODEL=tiny-$$  # the containers are MODEL-train and MODEL-serve: never a name of the user's
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ENGINE_FLAGS=""
declare -a TIMES=()

cleanup() {
  "$ENGINE" $ENGINE_FLAGS rm -f "$MODEL-train" "$MODEL-serve" >/dev/null 2>&1 || true
  if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() { echo "check_containers: FAILED: $*" >&2; exit 1; }
step() {  # step NAME COMMAND...: runs it, records its time
  local name=$1 started elapsed
  shift
  echo "--- $name"
  started=$(date +%s%N)
  "$@" || fail "$name"
  elapsed=$(( ($(date +%s%N) - started) / 100000000 ))
  TIMES+=("$(printf '%-34s %5d.%d s' "$name" $((elapsed / 10)) $((elapsed % 10)))")
}

# --- the base image -----------------------------------------------------------------------------------------
if [ -z "${BASE:-}" ]; then
  if "$ENGINE" image inspect localhost/debian-python:bookworm >/dev/null 2>&1; then
    BASE=localhost/debian-python:bookworm
  elif timeout 120 "$ENGINE" pull -q python:3.12-slim >/dev/null 2>&1; then
    BASE=python:3.12-slim
  else
    command -v debootstrap >/dev/null || fail "no base image: python:3.12-slim cannot be pulled and debootstrap is missing"
    # the archive apt uses here (its sources read as apt reads them: scripts/apt_mirror.py)
    mirror=$(python3 scripts/apt_mirror.py) || fail "no Debian archive to make a base image from (see the line above)"
    step "base image (debootstrap)" bash -c "debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates bookworm '$WORK/rootfs' '$mirror' \
        >'$WORK/debootstrap.log' && tar -C '$WORK/rootfs' -c . | $ENGINE import - localhost/debian-python:bookworm"
    rm -rf "$WORK/rootfs"
    BASE=localhost/debian-python:bookworm
  fi
fi

# --- the engine, as this machine runs it --------------------------------------------------------------------
BUILD_FLAGS="--network=host"
if [ "$ENGINE" = podman ]; then
  BUILD_FLAGS="$BUILD_FLAGS --format docker"  # the OCI format has no HEALTHCHECK
  # Where crun cannot set rlimits (CONTAINERS-NOTES.md): runc, with podman's default ulimits off.
  if ! podman run --rm --network=host "$BASE" true >/dev/null 2>&1; then
    printf '[containers]\ndefault_ulimits = []\n' > "$WORK/containers.conf"
    export CONTAINERS_CONF=$WORK/containers.conf
    ENGINE_FLAGS="--runtime runc"
  fi
fi
# pip inside the build uses this machine's pip configuration (index, certificates, local wheels) through
# read-only mounts, so that nothing of this machine's set-up is baked into the image.
for path in /etc/pip.conf /etc/xdg/pip /etc/ssl/certs/ca-certificates.crt \
            $(pip config list 2>/dev/null | grep -o "'[^']*'" | tr -d "'" | tr ' ' '\n' | sed 's#^file://##' | grep '^/' || true); do
  if [ -e "$path" ]; then BUILD_FLAGS="$BUILD_FLAGS -v $path:$path:ro"; fi
done

echo "engine: $ENGINE $ENGINE_FLAGS; base image: $BASE"

MAKE=(make -s -C "$REPO" ENGINE="$ENGINE" ENGINE_FLAGS="$ENGINE_FLAGS" IMAGE="$IMAGE" SERVE_IMAGE="$SERVE_IMAGE"
      BASE="$BASE" DATA="$DATA" CORPUS=tiny MODEL="$MODEL" USER_FLAGS= PUBLISH=--network=host)

# --- build ----------------------------------------------------------------------------------------------------
step "build the CPU image" "${MAKE[@]}" image BUILD_FLAGS="$BUILD_FLAGS"
SIZE=$("$ENGINE" $ENGINE_FLAGS image inspect "$IMAGE" --format '{{.Size}}')
USER_IN_IMAGE=$("$ENGINE" $ENGINE_FLAGS image inspect "$IMAGE" --format '{{.Config.User}}')
[ "$USER_IN_IMAGE" = charrnn ] || fail "the image runs as '$USER_IN_IMAGE', not its own non-root user"
step "build the serving image" "${MAKE[@]}" image-serve BUILD_FLAGS="$BUILD_FLAGS"
SERVE_SIZE=$("$ENGINE" $ENGINE_FLAGS image inspect "$SERVE_IMAGE" --format '{{.Size}}')

# --- the workflow, as the image's own user (uid 1000) owning the data directory -------------------------------
mkdir -p "$DATA/generated" "$DATA/checkpoints"
python3 - "$DATA/tiny.txt" <<'EOF'
import os, sys, sysconfig
root = sysconfig.get_paths()["stdlib"]
text = "".join(open(os.path.join(root, name), encoding="utf-8").read() for name in sorted(os.listdir(root))
               if name.endswith(".py") and name[0] in "abc")[:300_000]
open(sys.argv[1], "w", encoding="utf-8").write(text)
EOF
chown -R 1000:1000 "$DATA"
step "preprocess" "${MAKE[@]}" preprocess
[ -s "$DATA/generated/tiny.h5" ] && [ -s "$DATA/generated/tiny.json" ] || fail "preprocess wrote no generated/tiny.h5|json"

TRAIN_FLAGS="--rnn_size 64 --num_layers 1 --wordvec_size 32 --batch_size 16 --seq_length 50 --max_iters 300"
TRAIN_FLAGS="$TRAIN_FLAGS --checkpoint_every 50 --print_every 50 --seed 1"
step "train (start, detached)" "${MAKE[@]}" train TRAIN_FLAGS="$TRAIN_FLAGS"
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$(( $(date +%s) + $1 )) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 1
  done
}
step "train until its first checkpoint" wait_for 600 "a checkpoint" test -e "$DATA/checkpoints/${MODEL}_50.json"
step "train-stop (SIGTERM)" "${MAKE[@]}" train-stop
STOPPED=$("$ENGINE" $ENGINE_FLAGS inspect "$MODEL-train" --format '{{.State.ExitCode}}')
STOP_LINE=$("$ENGINE" $ENGINE_FLAGS logs "$MODEL-train" 2>&1 | grep "Stopped by SIGTERM" || true)
[ -n "$STOP_LINE" ] || fail "the stopped training said nothing of a checkpoint (exit $STOPPED)"
step "train-start (resumes) to the end" bash -c "${MAKE[*]@Q} train-start >/dev/null && \
     [ \"\$($ENGINE $ENGINE_FLAGS wait $MODEL-train)\" = 0 ]"
RESUME_LINE=$("$ENGINE" $ENGINE_FLAGS logs "$MODEL-train" 2>&1 | grep "^Resuming" || true)
DONE_LINE=$("$ENGINE" $ENGINE_FLAGS logs "$MODEL-train" 2>&1 | grep "^Done: iteration 300" || true)
[ -n "$RESUME_LINE" ] && [ -n "$DONE_LINE" ] || fail "the restarted training did not resume and finish"
"$ENGINE" $ENGINE_FLAGS rm "$MODEL-train" >/dev/null

SAMPLE=$(mktemp)
step "sample" bash -c "${MAKE[*]@Q} sample SAMPLE_FLAGS='--length 200 --seed 1 --start_text def' > '$SAMPLE'"
[ "$(wc -c < "$SAMPLE")" -ge 150 ] || fail "the sample is too short: $(cat "$SAMPLE")"
step "export (SavedModel, TFLite)" "${MAKE[@]}" export
ls "$DATA"/export/"$MODEL"/1/saved_model.pb "$DATA"/export/"$MODEL"/1/tflite/model.tflite >/dev/null \
  || fail "no SavedModel and model.tflite in export/$MODEL/1"

step "serve (start)" "${MAKE[@]}" serve SERVE_FLAGS="--port $PORT"
BASE_URL=http://127.0.0.1:$PORT
step "serve until /healthz answers" wait_for 300 "/healthz" curl -sf "$BASE_URL/healthz"
requests() {  # the writers' requests to the server on PORT: sets GENERATE, COMPLETION, OLLAMA
  GENERATE=$(curl -sf "$BASE_URL/generate?start_text=def%20load&n=2") || fail "GET /generate"
  echo "$GENERATE" | python3 -c 'import json, sys; r = json.load(sys.stdin); assert len(r["completions"]) == 2, r' \
    || fail "GET /generate's reply: $GENERATE"
  curl -sf "$BASE_URL/write" | grep -q "<title>Write" || fail "GET /write"
  COMPLETION=$(curl -sf "$BASE_URL/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$MODEL\", \"prompt\": \"import \", \"max_tokens\": 30, \"seed\": 1}") || fail "POST /v1/completions"
  echo "$COMPLETION" | python3 -c 'import json, sys; r = json.load(sys.stdin); assert len(r["choices"][0]["text"]) == 30, r' \
    || fail "POST /v1/completions' reply: $COMPLETION"
  OLLAMA=$(curl -sf "$BASE_URL/api/generate" -H 'Content-Type: application/json' -d "{\"model\": \"$MODEL\", \"prompt\": \"class \", \"stream\": false,
    \"options\": {\"num_predict\": 20}}") || fail "POST /api/generate"
}
requests
CPU_GENERATE=$GENERATE CPU_COMPLETION=$COMPLETION CPU_OLLAMA=$OLLAMA
HEALTH="not checked (docker runs it on its own schedule)"
if [ "$ENGINE" = podman ]; then
  "$ENGINE" $ENGINE_FLAGS healthcheck run "$MODEL-serve" 2>/dev/null || fail "the serve container's health check"
  HEALTH=healthy
fi
step "serve-stop" "${MAKE[@]}" serve-stop

# --- the serving image: the same requests to the export's model.tflite, and no TensorFlow in it -----------------
if "$ENGINE" $ENGINE_FLAGS run --rm --network=host --entrypoint python3 "$SERVE_IMAGE" -c "import tensorflow" \
     >/dev/null 2>&1; then
  fail "TensorFlow imports in the serving image"
fi
NO_TF=$("$ENGINE" $ENGINE_FLAGS run --rm --network=host "$SERVE_IMAGE" sample --checkpoint /nothing.keras 2>&1 \
        >/dev/null | grep "sample: error" || true)  # (the engine's own lines aside)
case "$NO_TF" in *"needs TensorFlow, which this install lacks"*) ;; *) fail "the serving image's sample said: $NO_TF";; esac
step "serve-lite (start)" "${MAKE[@]}" serve-lite SERVE_FLAGS="--port $PORT"
step "serve-lite until /healthz answers" wait_for 120 "/healthz" curl -sf "$BASE_URL/healthz"
requests
if [ "$ENGINE" = podman ]; then
  "$ENGINE" $ENGINE_FLAGS healthcheck run "$MODEL-serve" 2>/dev/null || fail "the serving image's health check"
fi
step "serve-stop (serving image)" "${MAKE[@]}" serve-stop

echo
echo "=== check_containers: passed ($ENGINE, base $BASE)"
echo "image $IMAGE: $(python3 -c "print(f'{$SIZE / 1e9:.2f} GB')") ($SIZE bytes), user $USER_IN_IMAGE"
echo "image $SERVE_IMAGE (no TensorFlow): $(python3 -c "print(f'{$SERVE_SIZE / 1e9:.2f} GB')") ($SERVE_SIZE bytes)," \
     "$(python3 -c "print(f'{$SERVE_SIZE / $SIZE:.0%}')") of the CPU image's size"
printf '%s\n' "${TIMES[@]}"
echo "stop: $STOP_LINE"
echo "after the restart: $RESUME_LINE; $DONE_LINE"
echo "sample: $(head -c 200 "$SAMPLE" | tr '\n' ' ')"
echo "GET /generate?start_text=def%20load&n=2: $CPU_GENERATE"
echo "POST /v1/completions: $CPU_COMPLETION"
echo "POST /api/generate: $(echo "$CPU_OLLAMA" | head -c 300)"
echo "serve container's health check: $HEALTH"
echo "serving image: GET /generate: $GENERATE"
echo "serving image: POST /v1/completions: $COMPLETION"
echo "serving image: sample --checkpoint: $NO_TF"
