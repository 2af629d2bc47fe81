"""gitroot: an OS root filesystem stored as signed git commits, served by FUSE.

Modules and their roles (see docs/architecture.md):

- ``errors``: the one error hierarchy; every user-facing failure is a subclass.
- ``manifest``: the metadata git cannot store (owners, modes, mtimes, xattrs,
  devices, empty directories, hardlinks); a pure parser and formatter.
- ``gitobjects``: raw git tree objects as bytes, parsed and built without
  trusting their names.
- ``importer``: a directory tree -> blobs, trees, manifest, commit.
- ``vfs``: a commit as a read-only filesystem view (no FUSE in it).
- ``fusefs``: the thin fusepy adapter over ``vfs``; ``mount`` runs it.
- ``cli``: the command-line verbs; nothing below it prints or exits.
"""

__version__ = "0.1.0"
