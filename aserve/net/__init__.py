"""The asyncio side of connections: protocols fed by sockets, flow control, timers."""
