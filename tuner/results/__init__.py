"""The results: frozen trial records, the one store of a study's state (optuna's storage with the
claims table beside it), study names and exports."""
