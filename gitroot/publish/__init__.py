"""The publisher's side: a directory tree into a commit, bundles and the
static index.  Never imported on a device's boot path.
"""
