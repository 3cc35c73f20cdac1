"""Django on aserve: list "aserve.django" first in INSTALLED_APPS and `manage.py runserver`
runs on aserve, with runserver's output, static files, checks and reloading contract."""
