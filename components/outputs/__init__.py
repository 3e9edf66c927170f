"""Caption sinks: where a session's captions go besides the speaker's page (its followers)."""
