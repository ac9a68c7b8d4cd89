"""ASGI apps the tests serve (in-process via `run_server`, or by import string in a
subprocess: `fastserve tests.apps.<module>:<attr>` with the repository as working directory)."""
