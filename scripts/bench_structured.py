"""Structured outputs: constrained decode speed and time to first token against the same requests
without a constraint, on one gateway, rounds interleaved (medians).

Part of `scripts/bench`; alone: `.venv/bin/python scripts/bench_structured.py [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# The measurement is benchlib's, which bench.py runs too.
from benchlib import SMOLLM, gateway_server, measure_structured, run_size, sampling_cpu, structured_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, max_tokens = run_size(args.quick)
    server = gateway_server(Path(tempfile.mkdtemp(prefix="bench-structured-")), "gw", {"smollm2": SMOLLM}, {})
    try:
        result = measure_structured(server.url, "smollm2", rounds, max_tokens)
    finally:
        server.stop()
    result["sampling_cpu_ms_per_token"] = sampling_cpu(SMOLLM, max_tokens)
    json.dump(result, sys.stdout, indent=2)
    for name, ours, _, target, met in structured_rows(result):
        print(f"| {name} | {ours} | - | {target} | {'yes' if met else '**no**'} |")


if __name__ == "__main__":
    main()
