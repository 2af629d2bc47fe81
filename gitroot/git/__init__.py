"""Git as gitroot stores a root filesystem: raw objects and trees, the
manifest format, repositories, revisions and ref names.

Shared by every room (boot, serve, publish, device); standard library and
pygit2 only, never HTTP, YAML or signing code.
"""
