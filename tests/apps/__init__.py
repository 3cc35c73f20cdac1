"""Small apps and a subprocess helper for the CLI, loader, signal and fallback tests."""
