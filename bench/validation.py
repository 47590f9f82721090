"""What edge validation costs the gateway per frame (``python -m bench.validation``).

Times, with ``timeit``, the steps of a client frame's way through the gateway that edge
validation adds, on the roundtrip workload's chat frame (``loadgen.PAYLOAD``) and the schema
``bench.echo_worker`` declares for it, beside the decoding every frame already costs:

* ``decode``: ``decode_client_frame`` of the frame's bytes (every frame, for scale);
* ``no schema``: ``Validators.problem`` for an action without a schema (a dict miss);
* ``valid``: the same with the compiled fastjsonschema validator, for data that matches;
* ``invalid``: data that does not match (the exception and the message of ``invalid_data``);
* ``jsonschema``: the same valid data with the ``jsonschema`` package's (interpreted)
  Draft7Validator, for comparison when it is installed (it is a dev requirement).

Each is run ``--repeat`` times of ``--number`` calls; the median, in microseconds per call, is
printed (and the min, which is what the code costs when nothing else runs). No processes,
no Redis: steady enough for a loaded machine, and blind to what the frame path costs around it
(the roundtrip with ``--systems wsq,wsq-schema`` measures that).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import timeit
from collections.abc import Callable
from typing import Any, cast

import orjson

from bench.echo_worker import ECHO_SCHEMA
from bench.loadgen import PAYLOAD
from wsq_gateway.validation import Validators
from wsq_protocol.action_schemas import schema_text
from wsq_protocol.frames import decode_client_frame

FRAME = orjson.dumps({"action": "echo", "data": PAYLOAD, "id": "1733470000000000000"})
INVALID = {"text": 42}


def cases() -> dict[str, Callable[[], object]]:
    checks = Validators(cast(Any, None), "bench:schemas", 2.0)
    checks.load("1", {"echo": schema_text(ECHO_SCHEMA)})
    assert checks.problem("echo", PAYLOAD) is None
    assert checks.problem("echo", INVALID) is not None
    found: dict[str, Callable[[], object]] = {
        "decode": lambda: decode_client_frame(FRAME),
        "no schema": lambda: checks.problem("other", PAYLOAD),
        "valid": lambda: checks.problem("echo", PAYLOAD),
        "invalid": lambda: checks.problem("echo", INVALID),
    }
    if importlib.util.find_spec("jsonschema") is not None:
        jsonschema: Any = importlib.import_module("jsonschema")  # a dev requirement, not the gateway's
        interpreted = jsonschema.Draft7Validator(ECHO_SCHEMA)
        found["jsonschema"] = lambda: interpreted.is_valid(PAYLOAD)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.validation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per timing (default 20000)")
    parser.add_argument("--repeat", type=int, default=15, help="timings per case (default 15)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    for name, call in cases().items():
        times = timeit.repeat(call, number=args.number, repeat=args.repeat)
        per_call = [t / args.number * 1e6 for t in times]
        results[name] = {"median_us": statistics.median(per_call), "min_us": min(per_call)}
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"{'case':<12} {'median µs':>10} {'min µs':>8}   ({args.repeat} x {args.number} calls)")
    for name, result in results.items():
        print(f"{name:<12} {result['median_us']:>10.2f} {result['min_us']:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
