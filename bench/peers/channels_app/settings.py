"""Django settings of the Channels peer: no database, no apps but channels, one Redis channel layer."""

import os

SECRET_KEY = "wsq-benchmark-only"  # a throw-away project on loopback
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["channels"]
DATABASES: dict[str, object] = {}
USE_TZ = True
ASGI_APPLICATION = "bench.peers.channels_app.asgi.application"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [os.environ["BENCH_REDIS_URL"]],
            # The worker's channel holds every request in flight (200 at high load): past the
            # default capacity of 100, send() would raise ChannelFull instead of queueing.
            "channel_capacity": {"echo-worker": 10_000},
        },
    }
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
