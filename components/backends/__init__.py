"""Client-side backends: ways to open a live transcription stream (see ``base``)."""
