"""The shared libraries an ELF executable or library names (DT_NEEDED).

When a program starts from a cold mount, the kernel first reads its
executable, then the dynamic loader opens each library it needs, one after
the other, and the FUSE loop inflates and hashes each blob only when it is
asked for.  Knowing the list as soon as the executable's first bytes are
read lets the read-ahead threads (gitroot.serve.readahead) inflate the
libraries on the other core while the loop serves the executable itself
(RootView._elf_first_read; docs/performance.md, "Libraries read ahead").

This module only reads bytes: a pure function from an ELF image to the
names it needs and where it says to look.  The image comes from a release
and is hostile: anything malformed gives an empty answer (the libraries
are then read when asked for, as without this), and the work is bounded
(program headers, dynamic entries and names are capped).

Threading: pure functions, no state.
"""

import struct
from typing import List, NamedTuple

#: bounds on what one image may make this module read
MAX_PROGRAM_HEADERS = 64
MAX_DYNAMIC_ENTRIES = 512
MAX_NEEDED = 64
MAX_SEARCH = 8          # directories of a DT_RUNPATH
MAX_NAME = 255

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29

_HEADER = struct.Struct("<HHIQQQIHHHHHH")      # e_type .. e_shstrndx of ELF64
_PHDR = struct.Struct("<IIQQQQQQ")              # Elf64_Phdr
_DYN = struct.Struct("<qQ")                     # Elf64_Dyn


class Needs(NamedTuple):
    needed: List[bytes]         # DT_NEEDED names, in order
    search: List[bytes]         # DT_RUNPATH (or DT_RPATH) directories, in order


NOTHING = Needs([], [])


def needs(image: bytes) -> Needs:
    """What the dynamic loader will look for to run *image*: NOTHING for
    anything but a well-formed 64-bit little-endian ELF with a dynamic
    section (32-bit and big-endian images are left alone, like static
    ones)."""
    if len(image) < 64 or image[:6] != b"\x7fELF\x02\x01":
        return NOTHING
    try:
        return _needs(image)
    except (struct.error, ValueError, IndexError, OverflowError):
        return NOTHING


def _needs(image: bytes) -> Needs:
    (_, _, _, _, phoff, _, _, _, phentsize, phnum, _, _, _) = _HEADER.unpack_from(image, 16)
    if (phentsize != _PHDR.size or not 0 < phnum <= MAX_PROGRAM_HEADERS
            or phoff + phnum * _PHDR.size > len(image)):
        return NOTHING
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = _PHDR.unpack_from(
            image, phoff + i * _PHDR.size)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC and dynamic is None:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return NOTHING
    start, size = dynamic
    count = min(size, len(image) - start) // _DYN.size
    count = min(count, MAX_DYNAMIC_ENTRIES)
    needed, paths, strtab = [], [], None
    for i in range(count):
        tag, value = _DYN.unpack_from(image, start + i * _DYN.size)
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED and len(needed) < MAX_NEEDED:
            needed.append(value)
        elif tag == DT_STRTAB:
            strtab = value
        elif tag in (DT_RPATH, DT_RUNPATH):
            paths.append((tag, value))
    if strtab is None or not needed:
        return NOTHING
    # DT_STRTAB is an address: the file offset is that of the PT_LOAD holding it
    table = None
    for vaddr, offset, filesz in loads:
        if vaddr <= strtab < vaddr + filesz:
            table = strtab - vaddr + offset
            break
    if table is None:
        return NOTHING
    # DT_RUNPATH wins over DT_RPATH, as in the loader
    runpath = [v for tag, v in paths if tag == DT_RUNPATH] or [v for _, v in paths]
    search = []
    for value in runpath[:1]:
        search.extend(d for d in _string(image, table + value).split(b":") if d)
    del search[MAX_SEARCH:]
    return Needs([name for name in (_string(image, table + v) for v in needed) if name],
                 search)


def _string(image: bytes, at: int) -> bytes:
    """The NUL-ended string at *at* (at most MAX_NAME * 4 bytes: a
    DT_RUNPATH holds several directories); b"" if none ends there."""
    if not 0 <= at < len(image):
        return b""
    end = image.find(b"\0", at, at + MAX_NAME * 4 + 1)
    return image[at:end] if end >= 0 else b""
