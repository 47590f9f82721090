"""Everything the gateway does with Redis.

* :mod:`.batcher` — writes, many per round trip (one pipeline per event-loop tick).
* :mod:`.inbound` — what the gateway tells the workers: connections and client frames.
* :mod:`.outbound` — what publishers and workers tell the gateway: frames to deliver.
"""
