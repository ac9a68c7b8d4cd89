"""fastserve's benchmark harness: fastserve side by side with uvicorn, granian and hypercorn.

Run it with `python perf/bench.py` (see perf/README.md). The modules here only use the standard
library, except `chart.py` (matplotlib) and the WebSocket client, which run inside the
benchmark's own venv.
"""
