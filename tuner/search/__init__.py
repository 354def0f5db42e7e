"""The search: the space of settings, which trial runs next (grid or TPE), pruning, the stop
rule, the finalists that decide the winner, and the sweep that runs it all."""
