"""gitroot rollback: back to the previous good release."""

import argparse
import time

from gitroot.boot.state import booted_commit
from gitroot.boot.transitions import rollback
from gitroot.cli.device_args import add_device_arguments, who
from gitroot.device.bootloader import sync_device
from gitroot.device.context import device_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    with device.changing_state() as (store, state, _problem):
        result = rollback(state, booted_commit(), device.config.tries, time.time())
        store.save(result.state, "rollback", who(), result.commit, result.detail)
        sync_device(device, result.state)
    if result.cancelled:
        print(f"cancelled the trial {result.cancelled[:12]}; next boot: last good "
              f"{(result.commit or '-')[:12]}; upgrades held")
    else:
        print(f"next boot: previous good release {result.commit[:12]}; upgrades held until "
              "'gitroot pin --release'")
    return 0
