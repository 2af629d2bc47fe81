"""Where the benchmarks write their JSON (shared by mount.py and bundle.py)."""

import json
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def write_results(result: dict, path: str, name: str) -> str:
    """Write *result* to *path*, or to bench/results/NAME-MODE-TIME.json
    (gitignored) when *path* is empty; print and return where."""
    if not path:
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        path = os.path.join(HERE, "results",
                            f"{name}-{result['mode']}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print(f"results: {path}")
    return path
