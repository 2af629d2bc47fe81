"""What one fetch runs with: the configuration file, the kernel command line,
the remote document and the operator's options merged into
:class:`FetchSettings` (precedence in docs/configuration.md).
"""

from dataclasses import replace
from typing import Optional

from gitroot.device.context import Device
from gitroot.device.fetch import FetchSettings
from gitroot.device.remoteconfig import (EffectiveSettings, effective_settings,
                                         fetch_remote_document)
from gitroot.errors import UsageError
from gitroot.git.refs import branch_name_problem


def device_settings(device: Device) -> EffectiveSettings:
    """The config merged with the command line and the remote document (fetched
    here when the config names one)."""
    config = device.config
    remote, problem = fetch_remote_document(config.remote_config) \
        if config.remote_config.url else (None, None)
    return replace(effective_settings(config, device.boot, remote), remote_problem=problem)


def fetch_settings(device: Device, effective: EffectiveSettings, *,
                   source: Optional[str] = None, branch: Optional[str] = None,
                   allow_downgrade: bool = False, progress: bool = False) -> FetchSettings:
    """Settings for one fetch; *source* replaces the configured remotes.

    Refuses (ConfigError) a configuration that could not check what it
    fetches: no trusted keys under a signature policy, no remotes.
    """
    config = device.config
    if branch is not None:
        # checked as the config's branch is: git would run '*' as a glob refspec
        problem = branch_name_problem(branch)
        if problem is not None:
            raise UsageError(f"--branch {branch!r} is not a branch name: {problem}")
    if source:
        sources = [source]
        config.require_trust()
    else:
        sources = list(config.remotes)
        config.require_fetchable()
    keys = config.trusted_keys
    return FetchSettings(
        repository=device.repository, state_dir=device.state_dir,
        boot_dir=config.boot_dir, branch=branch or effective.branch,
        sources=sources, policy=config.signature_policy,
        allowed_signers=keys.allowed_signers, keyring=keys.keyring,
        tries=config.tries, max_signature_age=config.max_signature_age,
        noupgrade=effective.noupgrade, allow_downgrade=allow_downgrade, progress=progress,
        pinned=effective.pinned, pinned_source=effective.pinned_source,
        fetch_timeout=config.fetch_timeout,
        warnings=[effective.remote_problem] if effective.remote_problem else [],
    )
