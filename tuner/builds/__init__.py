"""Kernel builds of llama.cpp: what a built library can do, compiling a variant from the
installed llama-cpp-python's source, and the catalogue of builds side by side."""
