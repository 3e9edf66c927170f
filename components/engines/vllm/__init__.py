"""The GPU engine: vLLM with Voxtral Realtime, in process (``engine``), and the framing of its
audio stream (``voxtral``). vLLM itself is imported lazily."""
