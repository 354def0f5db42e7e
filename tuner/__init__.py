"""tuner: find the fastest llama.cpp settings for a GGUF model, prove they run on the GPU,
and write the config a llama-cpp-python server loads."""

from __future__ import annotations

__version__ = "0.1.0"
