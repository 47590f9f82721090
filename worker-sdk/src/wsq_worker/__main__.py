"""``python -m wsq_worker module:attribute``: the same as the ``wsq-worker`` command."""

from wsq_worker.cli import main

raise SystemExit(main())
