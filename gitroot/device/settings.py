"""What one fetch runs with: the configuration file, the kernel command line,
the remote document and the operator's options merged into
:class:`FetchSettings` (precedence in docs/configuration.md).
"""

from typing import Optional

from gitroot.device.context import Device
from gitroot.device.fetch import FetchSettings
from gitroot.device.remoteconfig import (EffectiveSettings, effective_settings,
                                         fetch_remote_settings)


def device_settings(device: Device) -> EffectiveSettings:
    """The config merged with the command line and the remote document (fetched
    here when the config names one)."""
    config = device.config
    remote = fetch_remote_settings(config.remote_config) if config.remote_config.url else None
    return effective_settings(config, device.boot, remote)


def fetch_settings(device: Device, effective: EffectiveSettings, *,
                   source: Optional[str] = None, branch: Optional[str] = None,
                   allow_downgrade: bool = False, progress: bool = False) -> FetchSettings:
    """Settings for one fetch; *source* replaces the configured remotes.

    Refuses (ConfigError) a configuration that could not check what it
    fetches: no trusted keys under a signature policy, no remotes.
    """
    config = device.config
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
    )
