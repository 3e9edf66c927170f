"""``python -m components``: serve a realtime endpoint or transcribe a file."""
