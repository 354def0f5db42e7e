"""The application layer: one sweep from start to end (run.py), its options (options.py), the
kernel builds it probes and makes (probing.py), its decision and config (decision.py,
final.py), the time budget (offloadbudget.py), and what runs beside a trial: the preflight,
the environment record, the drift sentinel, one sweep per GPU."""
