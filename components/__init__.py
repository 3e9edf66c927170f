"""Live Captions: live transcription over vLLM's Realtime protocol.

The library behind the page (``app.py``), the ``python -m components`` CLI and the SageMaker
container. See README.md for the map.
"""

__version__ = "0.1.0"
