"""Command-line tools. Each module defines its absl flags and a `run()` entry point."""
