#!/bin/sh
# The image's entry point: the first argument names the tool (preprocess, train, sample, eval, export, serve,
# convert, novelty, benchmark), the rest are its flags. `serve` listens on every interface of the container
# (a --host given after it wins). exec: the tool is PID 1, so that a container stop's SIGTERM reaches it
# (bin/train saves a checkpoint and exits).
set -e
if [ "$1" = "serve" ]; then
  shift
  exec python3 -m kerascharrnn.cli serve --host 0.0.0.0 "$@"
fi
exec python3 -m kerascharrnn.cli "$@"
