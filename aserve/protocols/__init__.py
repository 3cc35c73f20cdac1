"""Sans-IO protocol cores: bytes in, events out; no sockets, event loop, clock or threads."""
