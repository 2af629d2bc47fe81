"""What the initramfs's ``boot-select`` needs: the kernel command line, the
device's state records and store, and the pure boot transitions.

Standard library only (no pygit2, PyYAML, requests or cryptography): this
package runs in the initramfs before the root is mounted, and
tests/unit/test_boot_imports.py keeps it so.
"""
