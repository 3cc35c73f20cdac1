"""Management commands: runserver (and its alias aserve) on aserve."""
