"""Apps the tests serve or load by import string (`tests.support.apps.MODULE:attr`)."""
