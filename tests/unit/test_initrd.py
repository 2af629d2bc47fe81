"""gitroot.device.initrd: what an initrd holds, told by its bytes, and what
gitroot installs for the boot loader from it."""

import gzip
import lzma
import shutil
import zlib

import pytest

from gitroot.device import initrd
from gitroot.device.initrd import InitrdError, boot_initrd, layout, uncompressed


def newc(entries, ino=1) -> bytes:
    """A cpio newc archive of (name, data) files, padded as cpio -H newc does."""
    out = bytearray()
    for name, data in list(entries) + [("TRAILER!!!", b"")]:
        raw = name.encode() + b"\0"
        fields = [ino, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
        ino += 1
    out += b"\0" * (-len(out) % 512)
    return bytes(out)


MAIN = newc([("init", b"#!/bin/sh\necho hello\n" * 50),
             ("conf/initramfs.conf", b"MODULES=most\n"),
             ("lib/modules/x.ko", bytes(range(256)) * 40)])
EARLY = newc([(".", b""), ("kernel", b""), ("kernel/x86/microcode/GenuineIntel.bin",
                                             b"\x01\x02" * 100)])


@pytest.mark.parametrize("data, early_end, cpio_end, rest", [
    (MAIN, 0, len(MAIN), None),
    (EARLY + MAIN, len(EARLY), len(EARLY + MAIN), None),
    (EARLY + b"\0" * 64 + MAIN, len(EARLY) + 64, len(EARLY) + 64 + len(MAIN), None),
    (EARLY + gzip.compress(MAIN), len(EARLY), len(EARLY), "gzip"),
    (gzip.compress(MAIN), 0, 0, "gzip"),
    (lzma.compress(MAIN, check=lzma.CHECK_CRC32), 0, 0, "xz"),
    (b"\x28\xb5\x2f\xfd" + b"frame", 0, 0, "zstd"),
    (b"initrd 1", 0, 0, "unknown"),
    (MAIN[:300], 0, 0, "unknown"),                   # a cut archive is no archive
    (MAIN + b"junk", 0, len(MAIN), "unknown"),
    (b"", 0, 0, None),
], ids=["main", "early+main", "early+padding+main", "early+gzip", "gzip", "xz", "zstd",
        "not-an-initrd", "cut-archive", "archive+junk", "empty"])
def test_layout_from_the_bytes(data, early_end, cpio_end, rest):
    found = layout(data)
    assert (found.early_end, found.cpio_end, found.rest) == (early_end, cpio_end, rest)


def test_a_main_archive_first_is_not_early():
    # the microcode is only early when its archive comes first and holds
    # nothing else; a kernel/ file in the main archive does not count
    found = layout(MAIN + EARLY)
    assert found.early_end == 0 and found.uncompressed


def test_hostile_headers_end_the_walk():
    bad_size = bytearray(MAIN)
    bad_size[54:62] = b"7FFFFFFF"                     # file size past the end
    assert layout(bytes(bad_size)).rest == "unknown"
    bad_hex = bytearray(MAIN)
    bad_hex[94:102] = b"zzzzzzzz"
    assert layout(bytes(bad_hex)).rest == "unknown"


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_an_uncompressed_initrd_is_compressed_after_its_early_archives(codec):
    if codec == "zstd" and shutil.which("zstd") is None:
        pytest.skip("the zstd program is not installed")
    data = EARLY + MAIN
    out, done = boot_initrd(data, codec)
    assert out.startswith(EARLY) and codec in done
    stream = out[len(EARLY):]
    found = layout(out)
    assert found.early_end == len(EARLY) and found.rest == codec
    assert uncompressed(out) == data
    if codec == "gzip":
        assert zlib.decompress(stream, 16 + zlib.MAX_WBITS) == MAIN
    # deterministic: an unchanged release gives the same installed bytes
    assert boot_initrd(data, codec)[0] == out


def test_auto_falls_back_to_gzip_without_zstd(monkeypatch):
    monkeypatch.setattr(initrd.shutil, "which", lambda name: None)
    out, done = boot_initrd(MAIN)
    assert out[:2] == b"\x1f\x8b" and "gzip" in done
    assert gzip.decompress(out) == MAIN


@pytest.mark.parametrize("data", [
    EARLY + gzip.compress(MAIN),        # an older release's initrd
    gzip.compress(MAIN),
    b"initrd 1",                         # not an initrd: the loader's tries judge it
    b"",
], ids=["early+gzip", "gzip", "not-an-initrd", "empty"])
def test_other_initrds_are_installed_as_they_are(data):
    out, done = boot_initrd(data)
    assert out == data and "as it is" in done


def test_an_oversized_initrd_is_refused(monkeypatch):
    monkeypatch.setattr(initrd, "MAX_INITRD", len(MAIN) - 1)
    with pytest.raises(InitrdError, match="more than"):
        boot_initrd(MAIN)


def test_a_compressor_that_lies_is_caught(monkeypatch):
    monkeypatch.setattr(initrd, "zstd_stream", lambda data, level=9: b"not zstd")
    monkeypatch.setattr(initrd, "gzip_stream", lambda data, level=6: gzip.compress(b"other"))
    with pytest.raises(InitrdError, match="does not decompress"):
        boot_initrd(MAIN)


def test_uncompressed_undoes_each_codec_mkinitramfs_writes():
    assert uncompressed(EARLY + gzip.compress(MAIN)) == EARLY + MAIN
    assert uncompressed(lzma.compress(MAIN, check=lzma.CHECK_CRC32)) == MAIN
    assert uncompressed(MAIN) is None
    with pytest.raises(InitrdError, match="damaged"):
        uncompressed(gzip.compress(MAIN)[:-20])
    with pytest.raises(InitrdError, match="does not hold cpio"):
        uncompressed(gzip.compress(b"not cpio at all"))


def test_uncompress_file_rewrites_in_place(tmp_path):
    path = tmp_path / "initrd.img-6.1.0"
    path.write_bytes(EARLY + gzip.compress(MAIN))
    assert "uncompressed" in initrd.uncompress_file(str(path))
    assert path.read_bytes() == EARLY + MAIN
    assert "already" in initrd.uncompress_file(str(path))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
