"""The embedded CPU engine: faster-whisper over short windows, steered by a pure streaming
policy (``policy``) that decides what to decode and what to commit."""
