"""Serving: the SavedModel and TFLite export (with TF Serving's warm-up file), and bin/serve's web
application."""
