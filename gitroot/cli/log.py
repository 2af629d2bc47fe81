"""gitroot log: the history of pins, with who or what made each."""

import argparse
import json
import time

from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args, short


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    history = device.store(with_repo=False).history()
    if args.json:
        print(json.dumps(history, indent=2))
        return 0
    for h in history:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("time", 0)))
        print(f"{when}  {h.get('action', '?'):<10} {short(h.get('commit')):<12}  "
              f"by {h.get('by', '?')}: {h.get('detail', '')}")
    return 0
