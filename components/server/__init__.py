"""``components serve``: a vLLM-Realtime-compatible ``/v1/realtime`` server over an engine."""
