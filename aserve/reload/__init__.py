"""`--reload`: the supervisor, the template that forks workers, the worker, their IPC, the watch
filter and the error page."""
