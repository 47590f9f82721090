"""A minimal Django project: a WebSocket consumer in daphne, an echo consumer in ``runworker``."""
