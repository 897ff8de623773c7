"""bin/export: a checkpoint -> a SavedModel version for TensorFlow Serving (+ a TFLite model), or (--web DIR) the
writing page as a static folder that runs the model in the browser."""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

from absl import flags

from kerascharrnn.cli import common
from kerascharrnn.errors import UserError
from kerascharrnn.io import artifacts, files, paths
from kerascharrnn.io import checkpoint as ckpt


def define_flags(flag_values: flags.FlagValues) -> None:
    options = dict(flag_values=flag_values)
    flags.DEFINE_string("checkpoint", "", "Checkpoint to export: a .keras file (or its .json), or a torch-rnn .t7.",
                        **options)
    flags.DEFINE_string("export_dir", "export/models", "Base directory; the model goes to"
                        " export_dir/model_name/version.", **options)
    flags.DEFINE_string("model_name", "", "Model name (TF Serving's MODEL_NAME); default: the checkpoint name, e.g."
                        " cv/shakespeare_5000.keras -> shakespeare.", **options)
    flags.DEFINE_integer("version", None, "Version number (default: one more than the highest there; TF Serving"
                         " reads it as an int64).", lower_bound=1, upper_bound=2**63 - 1, **options)
    flags.DEFINE_bool("tflite", False, "Also write tflite/model.tflite (the `step` signature) and tflite/vocab.json.",
                      **options)
    flags.DEFINE_enum("quantize", "none", list(artifacts.QUANTIZE_MODES),
                      "TFLite weights: none (float32), float16, or dynamic (int8 weights, float activations).",
                      **options)
    flags.DEFINE_bool("xla", False, "Compile the generate signatures' loop with XLA: several times faster at small"
                      " batches; TF Serving must then run with --xla_cpu_compilation_enabled=true"
                      " (export/README.md).", **options)
    flags.DEFINE_string("web", "", "Instead, write the writing page as a static folder here: the model runs in the"
                        " writer's browser (open DIR/index.html from disk, or put DIR on any static host); no server,"
                        " and no request leaves the page.", **options)
    flags.DEFINE_bool("overwrite", False, "Replace an existing version directory (or --web folder).", **options)


def run(flag_values: flags.FlagValues, argv: List[str]) -> None:
    if not flag_values.checkpoint:
        raise UserError("--checkpoint is required (a .keras file written by bin/train)")
    if flag_values.web:
        return run_web(flag_values)
    if flag_values.quantize != "none" and not flag_values.tflite:
        raise UserError("--quantize applies to the TFLite model: add --tflite")
    model_path = ckpt.model_path_for(flag_values.checkpoint)
    ckpt.read_vocab(model_path)  # checks the file before TensorFlow loads
    name = artifacts.check_model_name(flag_values.model_name or artifacts.default_model_name(model_path))
    model_dir = os.path.join(flag_values.export_dir, name)
    version = flag_values.version or artifacts.next_version(model_dir)
    version_dir = os.path.join(model_dir, str(version))
    if os.path.exists(version_dir) and not flag_values.overwrite:
        raise UserError(f"{version_dir} already exists; pass --overwrite to replace it, or another --version")
    if os.path.exists(version_dir) and not os.path.isdir(version_dir):
        raise UserError(f"{version_dir} is a file, not a version directory; choose another --version or --export_dir")
    paths.check_outputs(inputs=[("--checkpoint", flag_values.checkpoint), ("--checkpoint", model_path)], outputs=[],
                        directories=[("--export_dir", version_dir)])
    files.require_writable_dir_for(version_dir)

    common.quiet_tensorflow()
    from kerascharrnn import devices
    from kerascharrnn.export import saved_model as export
    from kerascharrnn.models.charrnn import CharRNN

    devices.configure(-1)  # the cells export the same anywhere; a CPU trace is the safe one
    info = export.export(CharRNN.from_checkpoint(model_path), version_dir, source=model_path,
                         tflite=flag_values.tflite, quantize=flag_values.quantize, overwrite=flag_values.overwrite,
                         xla=flag_values.xla)
    print(f"Exported {model_path} to {version_dir} (signatures: generate = serving_default, generate_top_p, step)")
    for state in info["states"]:
        print(f"  step {state['name']}: {state['layer']} {state['part']} [batch, {state['size']}]")
    if flag_values.tflite:
        path = os.path.join(version_dir, artifacts.TFLITE_DIR, artifacts.TFLITE_FILE)
        print(f"TFLite ({flag_values.quantize}): {path}, {os.path.getsize(path):,} bytes, vocabulary beside it")


def run_web(flag_values: flags.FlagValues) -> None:
    given = [name for name in ("tflite", "xla", "version", "export_dir") if flag_values[name].present]
    if given or flag_values.quantize != "none":
        raise UserError(f"--web writes a folder of its own: --{(given or ['quantize'])[0]} is for the SavedModel"
                        " export (run bin/export again without --web)")
    model_path = ckpt.model_path_for(flag_values.checkpoint)
    ckpt.read_vocab(model_path)  # checks the file before TensorFlow loads
    name = artifacts.check_model_name(flag_values.model_name or artifacts.default_model_name(model_path))
    paths.check_outputs(inputs=[("--checkpoint", flag_values.checkpoint), ("--checkpoint", model_path)], outputs=[],
                        directories=[("--web", flag_values.web)])
    from kerascharrnn.export import web as web_export

    web_export.check_target(flag_values.web, flag_values.overwrite)
    files.require_writable_dir_for(flag_values.web)
    common.quiet_tensorflow()
    from kerascharrnn import devices
    from kerascharrnn.models.charrnn import CharRNN

    devices.configure(-1)
    info = web_export.export_web(CharRNN.from_checkpoint(model_path), flag_values.web, name=name, source=model_path,
                                 overwrite=flag_values.overwrite)
    index = os.path.join(flag_values.web, "index.html")
    print(f"Exported {model_path} to {flag_values.web} ({', '.join(info['layers'])};"
          f" {sum(info['bytes'].values()):,} bytes in all): open {index} in a browser, or put the folder on any"
          " static host")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.main(argv, define_flags, run, __doc__)


if __name__ == "__main__":
    sys.exit(main())
