"""The Django Channels peer: the same jobs as wsq's benchmark, run by daphne, channels_redis and
``runworker``. Its code runs only in bench/.venv-peers (bench/requirements-peers.txt)."""
