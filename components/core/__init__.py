"""The pure core: the Realtime protocol codec, audio framing, transcripts, languages, errors
and the evaluation set. No sockets, threads or event loop; everything else builds on it."""
