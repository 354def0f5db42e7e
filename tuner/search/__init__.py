"""Choosing, nothing run: the space of settings, which trial runs next (grid or TPE), pruning,
the stop rule, the Pareto front, the partial-offload layer counts, and the finalists'
statistics and decision. The sweep that runs it all is tuner/sweep/."""
