"""Channel binding trailers (gitroot.signing.channel), from tables."""

import pytest

from gitroot.signing.channel import (BindingError, binding_problem, bind_message,
                                     channels_of_message, channels_of_object)

# message -> channels (None: unbound) or BindingError
PARSE = [
    ("release 1\n", None),
    ("release 1\n\nGitroot-Channel: stable\n", ("stable",)),
    ("release 1\n\nGitroot-Channel: testing\nGitroot-Channel: stable\n", ("testing", "stable")),
    ("release 1\n\nSigned-off-by: a <a@b>\ngitroot-channel:  stable \n", ("stable",)),
    ("Gitroot-Channel: stable\n\nbut this paragraph is last\n", None),
    ("release\n\nGitroot-Channel: stable\nGitroot-Channel: stable\n", ("stable",)),
    ("release\n\nGitroot-Channel: a b\n", BindingError),
    ("release\n\nGitroot-Channel: *\n", BindingError),
    ("release\n\nGitroot-Channel:\n", BindingError),
    ("release\n\nGitroot-Channel: refs/heads/stable\n", BindingError),
    ("", None),
]


@pytest.mark.parametrize("message, expected", PARSE)
def test_channels_of_message(message, expected):
    if expected is BindingError:
        with pytest.raises(BindingError):
            channels_of_message(message)
    else:
        assert channels_of_message(message) == expected


@pytest.mark.parametrize("message, channels, expected", [
    ("release 1", ["stable"], "release 1\n\nGitroot-Channel: stable\n"),
    ("release 1\n", ["stable", "testing", "stable"],
     "release 1\n\nGitroot-Channel: stable\nGitroot-Channel: testing\n"),
    ("release 1\n\nGitroot-Channel: stable\n", ["stable", "lts"],
     "release 1\n\nGitroot-Channel: stable\nGitroot-Channel: lts\n"),
    ("release 1\n\nGitroot-Channel: stable\n", ["stable"],
     "release 1\n\nGitroot-Channel: stable\n"),
])
def test_bind_message(message, channels, expected):
    assert bind_message(message, channels) == expected
    assert channels_of_message(bind_message(message, channels)) == \
        tuple(dict.fromkeys((channels_of_message(message) or ()) + tuple(channels)))


def test_bind_message_refuses_a_bad_name():
    with pytest.raises(BindingError):
        bind_message("m", ["a..b"])


def test_tag_signature_block_is_not_the_last_paragraph():
    raw = (b"object " + b"a" * 40 + b"\ntype commit\ntag v1\ntagger t <t@t> 1 +0000\n\n"
           b"v1\n\nGitroot-Channel: stable\n-----BEGIN SSH SIGNATURE-----\nAAAA\n"
           b"-----END SSH SIGNATURE-----\n")
    assert channels_of_object(raw) == ("stable",)
    commit = b"tree " + b"b" * 40 + b"\nauthor a <a> 1 +0000\n\nrelease\n"
    assert channels_of_object(commit) is None


def test_binding_problem():
    assert binding_problem(None, "stable") is None
    assert binding_problem(("stable", "testing"), "stable") is None
    assert "not for stable" in binding_problem(("experimental",), "stable")
