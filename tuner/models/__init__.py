"""GGUF models: header reads and checks before any worker loads a file, parameter counts, and
synthetic models of real shapes for tests and benchmarks."""
