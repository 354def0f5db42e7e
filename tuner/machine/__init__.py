"""The machine: CPU threads, a CUDA machine's fitness for a sweep, and the clean environment of
helper processes."""
