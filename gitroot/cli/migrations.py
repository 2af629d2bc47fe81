"""gitroot migrations [--json]: applied and pending data migrations, the last run."""

import argparse
import json
import time

from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args
from gitroot.device.migrate import describe
from gitroot.device.persistence import layout_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument("--root", default="/", help="the booted release's root (default /)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    info = describe(layout_for(device.state_dir), args.root)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    for state, key in (("applied", "applied"), ("pending up", "pending_up"),
                       ("pending down", "pending_down")):
        for m in info[key]:
            print(f"{state:13} {m['id']}  {m['name'] or '(' + (m['problem'] or '?') + ')'}")
    for problem in info["problems"]:
        print(f"problem       {problem}")
    last = info["last_run"]
    if last:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.get("time", 0)))
        print(f"last run      {when} release {str(last.get('release'))[:12]}: "
              f"{last.get('result')}" + (f": {last['message']}" if last.get("message") else ""))
    else:
        print("last run      never")
    return 0
