"""App runners: ASGI and WSGI behind one interface."""
