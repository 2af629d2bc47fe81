"""A release's initrd, made ready for the boot loader: compressed here.

An image made by ``gitroot install-image`` keeps its initrd *uncompressed*
in ``/boot`` (``COMPRESS=none`` in initramfs-tools' configuration, and a
reproducible build, see docs/boot.md): inside the commit, git's deltas and
the bundle's xz then see the cpio archive's contents, and an initrd that
differs little from the last release travels as a small delta instead of a
whole new zstd stream (docs/performance.md).  The boot loader should not
read 150 MB through the firmware, though, so gitroot compresses the initrd
when it installs it where the loader reads: :func:`boot_initrd`.

What a file holds is told by its bytes, never its name (a release may be
old, or hostile):

- leading uncompressed cpio ``newc`` archives, walked header by header to
  their ``TRAILER!!!``; the first ones whose every entry is under
  ``kernel/`` are the *early* archives (CPU microcode, ACPI tables) that
  the kernel reads only when uncompressed and first, so they stay so;
- then either nothing (the whole initrd is uncompressed: compress the rest
  into one stream) or a compressed stream the kernel unpacks (gzip, xz,
  zstd, ...: an initrd from an older release, installed byte for byte);
- anything else (not an initrd gitroot can tell) is installed as it is:
  the loader's try counting then takes a release whose initrd the kernel
  cannot unpack back to the last good one, as for any broken release.

The compressed stream is zstd at mkinitramfs's own level 9 when the
``zstd`` program is there (Debian's initramfs-tools installs it), else
gzip level 6 from the standard library's zlib: both take seconds, and the
kernel unpacks both fast; xz makes a smaller file but takes ten times as
long to make and to unpack (figures in docs/performance.md).  Both are
deterministic (one zstd thread; no name or time in the gzip header), so an
unchanged release gives the same installed bytes, and the stream is
decompressed again and compared before it is installed.

Standard library only (plus the ``zstd`` program when present); functions
over bytes; no threads.
"""

import logging
import re
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

from gitroot.errors import GitrootError

log = logging.getLogger(__name__)

#: No release's initrd is read beyond this (uncompressed; Debian's with
#: MODULES=most and gitroot's hook is about 150 MB).  The same bound as a
#: blob the root's view inflates whole (gitroot.serve.vfs.MAX_WHOLE).
MAX_INITRD = 512 << 20
#: mkinitramfs's own zstd level; gzip's 9 saves under 1 % more than 6 for
#: ten times the time (docs/performance.md).
ZSTD_LEVEL = 9
GZIP_LEVEL = 6
#: seconds zstd may take (a 512 MiB initrd on a slow board: about a minute)
ZSTD_TIMEOUT = 900
CODECS = ("auto", "zstd", "gzip")
#: bytes decompressed at a time when a stream is checked against the initrd
CHUNK = 1 << 20

CPIO_MAGICS = (b"070701", b"070702")
CPIO_HEADER = 110
TRAILER = b"TRAILER!!!"
#: (format, magic bytes) of the streams Debian's kernel unpacks (CONFIG_RD_*)
COMPRESSED_MAGICS: Tuple[Tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("bzip2", b"BZh"),
    ("lz4", b"\x02\x21\x4c\x18"),
    ("lzo", b"\x89LZO\x00"),
    ("lzma", b"\x5d\x00\x00"),
)


_NOT_NUL = re.compile(rb"[^\0]")


class InitrdError(GitrootError):
    """An initrd gitroot refuses to install (too big), or cannot rewrite."""


@dataclass(frozen=True)
class InitrdLayout:
    """Where the parts of an initrd are (offsets into its bytes)."""

    early_end: int          # end of the leading early (kernel/...) archives
    cpio_end: int           # end of all leading uncompressed cpio archives
    rest: Optional[str]     # format of what follows: None (nothing), a
                            # COMPRESSED_MAGICS name, or "unknown"

    @property
    def uncompressed(self) -> bool:
        """Every byte is cpio: gitroot compresses it at install."""
        return self.rest is None and self.cpio_end > 0


def _archive(data: memoryview, at: int) -> Optional[Tuple[int, bool]]:
    """(end, early) of the cpio newc archive starting at *at*, or None when
    no whole archive starts there.  *early*: every name is ``kernel`` or
    under ``kernel/`` (or ``.``)."""
    early = True
    while True:
        header = bytes(data[at:at + CPIO_HEADER])
        if len(header) < CPIO_HEADER or header[:6] not in CPIO_MAGICS:
            return None
        try:
            filesize = int(header[54:62], 16)
            namesize = int(header[94:102], 16)
        except ValueError:
            return None
        name_at = at + CPIO_HEADER
        name = bytes(data[name_at:name_at + namesize]).rstrip(b"\0")
        body = (name_at + namesize + 3) & ~3
        at = (body + filesize + 3) & ~3
        if namesize == 0 or at > len(data):
            return None
        if name == TRAILER:
            return at, early
        if not (name in (b".", b"kernel") or name.startswith(b"kernel/")):
            early = False


def layout(data: bytes) -> InitrdLayout:
    """What *data* holds (see the module docstring)."""
    view = memoryview(data)
    at = early_end = 0
    in_early = True
    while at < len(view):
        if view[at] == 0:
            # the kernel skips NUL padding between archives
            match = _NOT_NUL.search(data, at)
            padded = match.start() if match else len(view)
            if in_early and early_end == at:
                early_end = padded      # the early part keeps its padding
            at = padded
            continue
        found = _archive(view, at)
        if found is None:
            break
        at, early = found
        in_early = in_early and early
        if in_early:
            early_end = at
    rest = bytes(view[at:at + 8])
    if not rest:
        return InitrdLayout(early_end, at, None)
    kind = next((name for name, magic in COMPRESSED_MAGICS if rest.startswith(magic)),
                "unknown")
    return InitrdLayout(early_end, at, kind)


def gzip_stream(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    """A gzip member of *data* with no name and mtime 0 (the same bytes
    for the same input and zlib)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _gunzip_chunks(stream: bytes) -> Iterator[bytes]:
    """*stream* (one gzip member) decompressed, a chunk at a time."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = stream
    while not inflater.eof:
        # with the input used up, zlib may still hold output: ask again
        chunk = inflater.decompress(pending, CHUNK)
        pending = inflater.unconsumed_tail
        if not chunk and not pending:
            break
        yield chunk
    if not inflater.eof or inflater.unused_data:
        raise zlib.error("not one whole gzip member")


def _matches(chunks: Iterator[bytes], data: bytes) -> bool:
    """Do *chunks* add up to *data*?  (Compared as they come: a stream is
    checked without a second copy of the initrd in memory.)"""
    view = memoryview(data)
    at = 0
    for chunk in chunks:
        if view[at:at + len(chunk)] != chunk:
            return False
        at += len(chunk)
    return at == len(view)


def zstd_stream(data: bytes, level: int = ZSTD_LEVEL) -> Optional[bytes]:
    """*data* through the ``zstd`` program (one thread: the same bytes for
    the same input and zstd), or None when it is missing or fails."""
    program = shutil.which("zstd")
    if program is None:
        return None
    try:
        proc = subprocess.run([program, "-q", f"-{level}", "-T1", "-c"], input=data,
                              capture_output=True, timeout=ZSTD_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("zstd failed (%s); the initrd is compressed with gzip", err)
        return None
    if proc.returncode != 0:
        log.warning("zstd exited %d (%s); the initrd is compressed with gzip",
                    proc.returncode, proc.stderr.decode(errors="replace").strip()[-200:])
        return None
    return proc.stdout


def _unzstd_chunks(stream: bytes) -> Iterator[bytes]:
    """*stream* through ``zstd -d``, a chunk at a time; an OSError when zstd
    is missing or fails."""
    with tempfile.TemporaryFile() as source:
        source.write(stream)
        source.seek(0)
        with subprocess.Popen([shutil.which("zstd") or "zstd", "-q", "-d", "-c"],
                              stdin=source, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL) as proc:
            try:
                yield from iter(lambda: proc.stdout.read(CHUNK), b"")
            finally:
                proc.stdout.close()
                if proc.wait(timeout=ZSTD_TIMEOUT) != 0:
                    raise OSError(f"zstd -d exited {proc.returncode}")


def _unzstd(stream: bytes) -> Optional[bytes]:
    try:
        return b"".join(_unzstd_chunks(stream))
    except (OSError, subprocess.SubprocessError):
        return None


def _zstd_matches(stream: bytes, data: bytes) -> bool:
    try:
        return _matches(_unzstd_chunks(stream), data)
    except (OSError, subprocess.SubprocessError):
        return False


def _gzip_matches(stream: bytes, data: bytes) -> bool:
    try:
        return _matches(_gunzip_chunks(stream), data)
    except zlib.error:
        return False


def compress(data: bytes, codec: str = "auto") -> Tuple[bytes, str]:
    """(stream, codec name) of *data*, checked by decompressing it again.
    *codec*: ``zstd``, ``gzip`` or ``auto`` (zstd when the program is
    there, else gzip)."""
    if codec not in CODECS:
        raise ValueError(f"unknown initrd codec {codec!r}")
    if codec in ("auto", "zstd"):
        stream = zstd_stream(data)
        if stream is not None and _zstd_matches(stream, data):
            return stream, "zstd"
        if stream is not None:
            log.warning("the zstd stream does not decompress to the initrd; gzip instead")
    stream = gzip_stream(data)
    if not _gzip_matches(stream, data):
        raise InitrdError("the compressed initrd does not decompress to the release's "
                          "(zlib fault?); not installed")
    return stream, "gzip"


def boot_initrd(data: bytes, codec: str = "auto") -> Tuple[bytes, str]:
    """The bytes to install for the boot loader, and what was done (one
    phrase for the log): an uncompressed initrd is compressed after its
    early archives (:func:`compress`); any other is returned as it is."""
    if len(data) > MAX_INITRD:
        raise InitrdError(f"the initrd is {len(data)} bytes, more than the "
                          f"{MAX_INITRD >> 20} MiB gitroot installs")
    found = layout(data)
    if not found.uncompressed:
        what = "empty" if not data else \
            "not an initrd gitroot can tell" if found.rest == "unknown" else \
            f"{found.rest}-compressed"
        return data, f"installed as it is ({what})"
    stream, used = compress(bytes(memoryview(data)[found.early_end:]), codec)
    early = f", {found.early_end} bytes of early archives kept first" if found.early_end else ""
    return data[:found.early_end] + stream, \
        f"compressed {len(data)} -> {found.early_end + len(stream)} bytes ({used}{early})"


# -- at build time: keeping the release's initrd uncompressed ---------------

def _decompress(kind: str, stream: bytes) -> Optional[bytes]:
    """*stream* (every concatenated member) decompressed, or None when
    nothing here can (lz4, lzo: no module, no program assumed)."""
    import bz2
    import lzma
    if kind == "gzip":
        import gzip
        return gzip.decompress(stream)
    if kind in ("xz", "lzma"):
        return lzma.decompress(stream)
    if kind == "bzip2":
        return bz2.decompress(stream)
    if kind == "zstd" and shutil.which("zstd"):
        return _unzstd(stream)
    return None


def uncompressed(data: bytes) -> Optional[bytes]:
    """*data* with its compressed main archive decompressed (the early
    archives as they are), or None when it is already uncompressed or
    cannot be decompressed here.  What comes out must be cpio to the end."""
    found = layout(data)
    if found.rest is None or found.rest == "unknown":
        return None
    try:
        main = _decompress(found.rest, data[found.cpio_end:])
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise InitrdError(f"the initrd's {found.rest} stream is damaged: {err}") from None
    if main is None:
        return None
    result = data[:found.cpio_end] + main
    check = layout(result)
    if not check.uncompressed:
        raise InitrdError(f"the initrd's {found.rest} stream does not hold cpio archives")
    return result


def uncompress_file(path: str) -> str:
    """Rewrite the initrd at *path* uncompressed (write beside, fsync,
    rename); returns what was done, one line."""
    from gitroot import atomic
    with open(path, "rb") as f:
        data = f.read(MAX_INITRD + 1)
    if len(data) > MAX_INITRD:
        raise InitrdError(f"{path} is more than {MAX_INITRD >> 20} MiB")
    found = layout(data)
    result = uncompressed(data)
    if result is None:
        if found.uncompressed:
            return f"{path} is uncompressed already"
        raise InitrdError(f"{path}: cannot decompress its "
                          f"{found.rest or 'empty'} data here")
    atomic.write_file(path, result, 0o644)
    return f"{path}: {found.rest} {len(data)} -> uncompressed {len(result)} bytes"
