"""Deployment: the production config llama_cpp.server loads, its sidecar and service env file,
the served-path measurements, and `tuner verify` against a real server."""
