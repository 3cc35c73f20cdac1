"""runserver on aserve, and the same command as `manage.py aserve`."""
