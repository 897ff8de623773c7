"""What bin/export writes: `saved_model` (a SavedModel version for TensorFlow Serving, and a TFLite model; `warmup`:
TF Serving's warm-up requests) and `web` (the writing page as a static folder whose model runs in the browser,
on `runtime.js`)."""
