"""The trial worker: the only code that imports llama_cpp. It runs in a spawned process, loads a
model once for its build and model settings, and answers measurement requests on its own pipe."""
