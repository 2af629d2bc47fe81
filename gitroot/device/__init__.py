"""A running device's side: configuration, remote document, effective
settings, the fetcher and its transports, boot files, garbage collection,
diffs and status.  Never imported by the boot path (``boot-select``,
``mount``).
"""
