"""The evidence: where llama.cpp really put the model and its operations (load log, scheduler
report, GPU split), the settings it really ran with, the machine, and why a figure may not be
trusted. Nothing here measures; it reads what llama.cpp and the machine say."""
