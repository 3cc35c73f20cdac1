"""`--reload`: the supervisor, the template that forks workers, their IPC, the watch filter
and the error page."""
