"""Speech engines: audio in, transcript events out (see :mod:`components.engines.base`)."""
