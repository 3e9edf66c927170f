"""One caption stream over many transport streams: handovers before a stream limit, replay
after a lost connection, and seams without doubled or dropped words."""
