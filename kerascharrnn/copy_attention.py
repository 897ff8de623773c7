"""Where copy attention lived up to v0.5 (now models/copy_attention.py): code that does
`import kerascharrnn.copy_attention` before loading a checkpoint keeps working, and checkpoints whose config names
this module load (the layer registers as "kerascharrnn>CopyAttention" wherever it is defined)."""

from kerascharrnn.models.copy_attention import MEMORY_PARTS, STATE_PARTS, CopyAttention  # noqa: F401
