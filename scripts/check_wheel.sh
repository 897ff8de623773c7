#!/usr/bin/env bash
# Builds the wheel, installs it into a fresh virtual environment (VENV, default /tmp/kerascharrnn-wheel-env)
# and runs every console script from an empty directory with no checkout in it, offline, and imports every tool
# in one interpreter; then installs it with the [lite] extra alone (no TensorFlow) into another one (LITE_VENV,
# default /tmp/kerascharrnn-wheel-lite-env), which samples and serves the exported model.tflite.
#   bash scripts/check_wheel.sh [path/to/tiny-shakespeare.txt]
set -Eeuo pipefail
# a step that fails says which, and where: the script never stops without a line
trap 'echo "check_wheel: FAILED at line $LINENO (exit $?): $BASH_COMMAND" >&2' ERR
repo=$(cd "$(dirname "$0")/.." && pwd)
shakespeare=${1:-$repo/../shared/data/tiny-shakespeare.txt}
t7=$(dirname "$shakespeare")/torch-rnn-shakespeare-2x128.t7
venv=${VENV:-/tmp/kerascharrnn-wheel-env}
lite_venv=${LITE_VENV:-/tmp/kerascharrnn-wheel-lite-env}
wheels=$(mktemp -d)
python3 -m pip wheel -q --no-deps -w "$wheels" "$repo"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --force-reinstall --no-deps "$wheels"/kerascharrnn-*.whl
"$venv/bin/pip" install -q "$(ls "$wheels"/kerascharrnn-*.whl)[tf,serve,tflite]"
export PATH="$venv/bin:$PATH"
work=$(mktemp -d) && cd "$work"
export KERAS_HOME="$work/keras-home" && mkdir -p "$KERAS_HOME/datasets"
cp "$shakespeare" "$KERAS_HOME/datasets/tiny-shakespeare.txt"
head -c 60000 "$shakespeare" > small.txt
set -x
python -c "import kerascharrnn, sys; assert '$repo' not in kerascharrnn.__file__, kerascharrnn.__file__"
# every tool in one interpreter, each called through its main()
python -c "
import importlib
from kerascharrnn.cli.__main__ import TOOLS
mains = [importlib.import_module('kerascharrnn.cli.' + t).main for t in TOOLS]
assert all(main([t, '--help']) == 0 for t, main in zip(TOOLS, mains))
" > /dev/null
kerascharrnn --help && kerascharrnn preprocess --help > /dev/null  # the one command (the container's)
kerascharrnn-preprocess --input_txt small.txt --output_h5 d.h5 --output_json d.json
kerascharrnn-train --input_h5 d.h5 --batch_size 8 --seq_length 32 --rnn_size 32 --wordvec_size 16 \
  --max_iters 20 --checkpoint_every 10 --print_every 10 --seed 1 --checkpoint_name cv/c
kerascharrnn-sample --checkpoint cv/c_best.keras --length 80 --seed 1
kerascharrnn-eval --checkpoint cv/c_20.json --input_h5 d.h5 --split test
kerascharrnn-export --checkpoint cv/c_20.keras --export_dir models --tflite
kerascharrnn-sample --saved_model models/c --length 60 --sample 0
kerascharrnn-sample --tflite models/c/1/tflite/model.tflite --length 60 --sample 0
# the writing page with no server, from the wheel's own runtime (no npm here)
kerascharrnn-export --checkpoint cv/c_20.keras --web web
test -s web/runtime.js && grep -q "KerasCharRNN.define" web/model.js && grep -q 'src="runtime.js"' web/index.html
port=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
kerascharrnn-serve --checkpoint cv/c_20.keras --port "$port" > serve.log 2>&1 &
server=$!
for _ in $(seq 120); do python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/healthz')" 2>/dev/null && break; sleep 1; done
python -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/generate?start_text=the&n=2').read().decode())"
# the writing page's files come with the wheel
python -c "import urllib.request; assert b'write.js' in urllib.request.urlopen('http://127.0.0.1:$port/write').read()"
python -c "import urllib.request; assert b'fetchMore' in urllib.request.urlopen('http://127.0.0.1:$port/write/write.js').read()"
python -c "
import json, urllib.request
body = json.dumps({'model': 'c', 'prompt': 'the', 'max_tokens': 5}).encode()
request = urllib.request.Request('http://127.0.0.1:$port/v1/completions', body, {'Content-Type': 'application/json'})
print(json.load(urllib.request.urlopen(request))['choices'][0])"
kill "$server"
kerascharrnn-sample --checkpoint cv/c_20.keras --length 2000 --seed 2 > sample.txt
kerascharrnn-novelty --input_txt small.txt sample.txt
kerascharrnn-convert --checkpoint "$t7" --output t7.keras
kerascharrnn-sample --checkpoint "$t7" --sample 0 --length 80 --start_text "ROMEO:"
kerascharrnn-benchmark --grid 1x16 --iters 2 --warmup 1 --batch_size 4 --seq_length 8 --input_h5 d.h5 \
  --what train --what preprocess --what sample --preprocess_mb 1 --sample_length 100
# the lite install: no TensorFlow; the exported model.tflite sampled and served, the others say what they need
[ -x "$lite_venv/bin/python" ] || python3 -m venv "$lite_venv"
"$lite_venv/bin/pip" install -q --force-reinstall --no-deps "$wheels"/kerascharrnn-*.whl
"$lite_venv/bin/pip" install -q "$(ls "$wheels"/kerascharrnn-*.whl)[lite]"
if "$lite_venv/bin/python" -c "import tensorflow" 2>/dev/null; then echo "check_wheel: TensorFlow in the lite install" >&2; exit 1; fi
"$lite_venv/bin/kerascharrnn-sample" --tflite models/c --length 60 --sample 0
port=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$lite_venv/bin/kerascharrnn-serve" --tflite models/c --port "$port" > serve-lite.log 2>&1 &
server=$!
for _ in $(seq 60); do python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/healthz')" 2>/dev/null && break; sleep 1; done
python -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/generate?start_text=the&n=2').read().decode())"
kill "$server"
"$lite_venv/bin/kerascharrnn-train" --input_h5 d.h5 2> train-lite.err && exit 1
grep -q "needs .*, which this install lacks: pip install 'kerascharrnn\[tf\]'" train-lite.err
set +x
echo "wheel check passed: every console script ran from $work, and the lite install served the .tflite"
