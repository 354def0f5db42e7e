"""The trial worker, both sides of its pipe. The child (``main``, ``bench``, ``served`` and
their helpers) is the only code that imports llama_cpp: it runs in a spawned process, loads a
model once for its build and model settings, and answers measurement requests. The parent side
spawns and feeds it (``runner``) and names what happened to each trial (``outcome``); the
messages between them are typed in ``protocol``."""
