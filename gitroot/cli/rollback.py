"""gitroot rollback: back to the previous good release."""

import argparse

from gitroot.cli.pin import who
from gitroot.cli.device_args import add_device_arguments
from gitroot.device.context import device_from_args
from gitroot.errors import UsageError
from gitroot.boot.state import booted_commit, schedule_trial
from gitroot.device.bootloader import sync_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    device = device_from_args(args)
    store = device.store()
    with store.locked():
        state = store.load()
        booted = booted_commit()
        if state.trial is not None and booted != state.trial.commit:
            # A scheduled release not yet booted: cancel it.
            from dataclasses import replace
            new = replace(state, trial=None, hold=True)
            store.save(new, "rollback", who(),
                       state.last_good, f"cancelled trial {state.trial.commit[:12]}")
            sync_device(device, new)
            print(f"cancelled the trial {state.trial.commit[:12]}; next boot: last good "
                  f"{(state.last_good or '-')[:12]}; upgrades held")
            return 0
        target = state.previous_good
        if target is None:
            raise UsageError("no previous good release to roll back to")
        new = schedule_trial(state, target, device.config.tries, hold=True)
        store.save(new, "rollback", who(), target, "back to the previous good release")
        sync_device(device, new)
    print(f"next boot: previous good release {target[:12]}; upgrades held until "
          "'gitroot pin --release'")
    return 0
