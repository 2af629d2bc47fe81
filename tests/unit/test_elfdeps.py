"""What an ELF image says it needs (gitroot.serve.elfdeps): a pure parser
of bytes that come from a release, so every malformed image must give an
empty answer, never an exception or unbounded work."""

import os
import struct

import pytest

from gitroot.serve import elfdeps
from gitroot.serve.elfdeps import NOTHING, needs
from tests import craft


def test_a_crafted_image_names_its_libraries_and_runpath():
    image = craft.elf_image([b"libfoo.so.1", b"libc.so.6"], runpath=b"/opt/a/lib:/opt/b/lib")
    assert needs(image) == ([b"libfoo.so.1", b"libc.so.6"], [b"/opt/a/lib", b"/opt/b/lib"])


def test_a_real_executable_of_this_machine():
    # any Debian's /bin/ls is a dynamic 64-bit executable linked with libc
    # (on a 32-bit or big-endian machine the parser answers NOTHING: skipped)
    with open("/bin/ls", "rb") as f:
        image = f.read()
    if image[4:6] != b"\x02\x01":
        pytest.skip("/bin/ls is not a 64-bit little-endian ELF here")
    assert b"libc.so.6" in needs(image).needed


def _patched(image, at, fmt, *values):
    out = bytearray(image)
    struct.pack_into(fmt, out, at, *values)
    return bytes(out)


GOOD = craft.elf_image([b"liba.so.1"])
DYN_AT = 64 + 56 + 8        # p_offset of the PT_DYNAMIC program header


@pytest.mark.parametrize("image", [
    b"",
    b"\x7fELF",
    b"#!/bin/sh\n" + b"\0" * 100,
    GOOD[:4] + b"\x01" + GOOD[5:],                          # 32-bit
    GOOD[:5] + b"\x02" + GOOD[6:],                          # big-endian
    GOOD[:63],                                              # truncated header
    GOOD[:64 + 56 + 20],                                    # truncated program headers
    _patched(GOOD, 54, "<H", 40),                           # e_phentsize not 56
    _patched(GOOD, 56, "<H", 0),                            # no program headers
    _patched(GOOD, 56, "<H", 65535),                        # too many of them
    _patched(GOOD, 32, "<Q", 2 ** 63),                      # e_phoff far away
    _patched(GOOD, DYN_AT, "<Q", len(GOOD) - 4),            # dynamic section cut off
    _patched(GOOD, DYN_AT, "<Q", 2 ** 62),                  # dynamic section far away
    _patched(GOOD, 64, "<I", 6),                            # no PT_LOAD: strtab unmapped
    _patched(GOOD, 64 + 16, "<Q", 0x10000000),              # strtab outside every PT_LOAD
], ids=lambda image: f"{len(image)}B")
def test_malformed_images_need_nothing(image):
    assert needs(image) == NOTHING


def test_a_name_past_the_end_or_unterminated_is_dropped():
    image = craft.elf_image([b"liba.so.1", b"libb.so.1"])
    # point the second DT_NEEDED past the end of the file
    at = image.index(struct.pack("<qQ", 1, 11))
    assert needs(_patched(image, at, "<qQ", 1, 10 ** 9)).needed == [b"liba.so.1"]
    # a string table that never ends its last name
    cut = craft.elf_image([b"x" * 5000])
    assert needs(cut).needed == []


def test_the_work_is_bounded(monkeypatch):
    # a dynamic section that claims a huge size is read up to its cap
    many = craft.elf_image([b"lib%d.so" % i for i in range(200)])
    found = needs(many).needed
    assert len(found) == elfdeps.MAX_NEEDED
    assert found[0] == b"lib0.so"
    huge = _patched(many, DYN_AT + 24, "<Q", 2 ** 40)      # p_filesz
    assert len(needs(huge).needed) <= elfdeps.MAX_NEEDED


def test_random_bytes_never_raise():
    for seed in range(200):
        image = bytearray(craft.elf_image([b"liba.so.1"], runpath=b"/x"))
        rnd = os.urandom(8)
        for k in range(0, 8, 2):
            image[rnd[k] % len(image)] = rnd[k + 1]
        result = needs(bytes(image))
        assert isinstance(result.needed, list) and len(result.needed) <= elfdeps.MAX_NEEDED
