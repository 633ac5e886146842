"""What a zfs destroy or rollback would remove, from the wrapper's read-only `tree`
listing, and how approvers see it; without a server."""

from __future__ import annotations

import pytest

from host_agent.adapters.zfs import TREE, parse_tree
from host_agent.approvals.manager import message
from host_agent.approvals.model import Approval
from host_agent.operations import Operation
from host_agent.request import HostOpRequest
from host_agent.runner import RunResult
from tests.support import open_zfs

zfs = open_zfs()

# Captured from a zfs-fuse pool built with:
#   zfs create tank/media; zfs create tank/media/photos; zfs create tank/media/photos/2023
#   zfs create tank/media/music; zfs snapshot tank/media@weekly; zfs snapshot tank/media@monday
#   zfs snapshot -r tank/media@daily; zfs snapshot tank/media/photos@import
#   zfs snapshot tank/media@adhoc; zfs create tank/scratch
# then listed with `zfs list -H -r -t all -o name,type,createtxg`: one line each, easy to
# read. `as_tree` turns them into what `host-agent-zfs tree` prints (zfs get -H -p -r).
MEDIA = (
    "tank/media\tfilesystem\t7\n"
    "tank/media@weekly\tsnapshot\t18\n"
    "tank/media@monday\tsnapshot\t23\n"
    "tank/media@daily\tsnapshot\t37\n"
    "tank/media@adhoc\tsnapshot\t47\n"
    "tank/media/music\tfilesystem\t13\n"
    "tank/media/music@daily\tsnapshot\t37\n"
    "tank/media/photos\tfilesystem\t9\n"
    "tank/media/photos@daily\tsnapshot\t37\n"
    "tank/media/photos@import\tsnapshot\t42\n"
    "tank/media/photos/2023\tfilesystem\t11\n"
    "tank/media/photos/2023@daily\tsnapshot\t37\n"
)
PHOTOS = (
    "tank/media/photos\tfilesystem\t9\n"
    "tank/media/photos@daily\tsnapshot\t37\n"
    "tank/media/photos@import\tsnapshot\t42\n"
    "tank/media/photos/2023\tfilesystem\t11\n"
    "tank/media/photos/2023@daily\tsnapshot\t37\n"
)
SCRATCH = "tank/scratch\tfilesystem\t49\n"


def as_tree(listing: str) -> str:
    """`name type txg` lines as `host-agent-zfs tree` prints them: two `zfs get` rows each."""
    rows = [line.split("\t") for line in listing.splitlines()]
    return "".join(f"{name}\ttype\t{kind}\n{name}\tcreatetxg\t{txg}\n" for name, kind, txg in rows)


LISTINGS = {
    "tank/media": as_tree(MEDIA),
    "tank/media/photos": as_tree(PHOTOS),
    "tank/scratch": as_tree(SCRATCH),
}
EVERYTHING_UNDER_MEDIA = [line.split("\t")[0] for line in MEDIA.splitlines()]
REFUSED_ROLLBACK = (
    "nothing: zfs refuses without recursive, because newer snapshots exist "
    "(a recursive rollback destroys them):"
)


def _operation(resource: str, *args: str) -> Operation:
    return zfs.parse(HostOpRequest("zfs", resource, args), "tester")


def _describe(resource: str, *args: str) -> list[str]:
    """Preview `args` on `resource` as the pipeline does, against the captured listing."""
    operation = _operation(resource, *args)
    preview = zfs.preview(operation)
    assert preview is not None
    listing = LISTINGS[preview.resource]
    return zfs.describe_preview(
        operation, RunResult(preview.wrapper_argv, 0, listing, "", False, 0)
    )


@pytest.mark.parametrize(
    ("resource", "args"),
    [
        pytest.param("tank/media@daily", ("destroy",), id="destroy-snapshot"),
        pytest.param("tank/media", ("destroy", "recursive"), id="destroy-dataset-recursive"),
        pytest.param("tank/media@daily", ("rollback",), id="rollback"),
    ],
)
def test_destroy_and_rollback_preview_with_a_read_only_tree_of_their_dataset(
    resource: str, args: tuple[str, ...]
) -> None:
    preview = zfs.preview(_operation(resource, *args))
    assert preview is not None
    assert preview.wrapper == "host-agent-zfs"
    assert preview.wrapper_argv == (TREE, "tank/media")
    assert not preview.mutating and not preview.recursive
    assert preview.command not in zfs.commands  # clients cannot ask for it


@pytest.mark.parametrize(
    ("resource", "args"),
    [
        pytest.param("tank", ("list",), id="list"),
        pytest.param("tank/media", ("get", "used"), id="get"),
        pytest.param("tank/media", ("snapshot", "s"), id="snapshot"),
    ],
)
def test_other_commands_have_no_preview(resource: str, args: tuple[str, ...]) -> None:
    assert zfs.preview(_operation(resource, *args)) is None


def test_parse_tree_keeps_zfs_order_and_creation_txg() -> None:
    noise = "cut short\ttype\n" + "tank/x@s\ttype\tsnapshot\n" + "tank/x@s\tcreatetxg\t-\n"
    entries = parse_tree(as_tree(PHOTOS) + noise)
    assert [(e.name, e.type, e.createtxg) for e in entries] == [
        ("tank/media/photos", "filesystem", 9),
        ("tank/media/photos@daily", "snapshot", 37),
        ("tank/media/photos@import", "snapshot", 42),
        ("tank/media/photos/2023", "filesystem", 11),
        ("tank/media/photos/2023@daily", "snapshot", 37),
    ]


@pytest.mark.parametrize(
    ("resource", "args", "lines"),
    [
        pytest.param(
            "tank/media@daily", ("destroy",), ["tank/media@daily"], id="snapshot-only-itself"
        ),
        pytest.param(
            "tank/media@daily",
            ("destroy", "recursive"),
            [
                "tank/media@daily",
                "tank/media/music@daily",
                "tank/media/photos@daily",
                "tank/media/photos/2023@daily",
            ],
            id="snapshot-recursive-same-name-below",
        ),
        pytest.param(
            "tank/media/photos@import",
            ("destroy", "recursive"),
            ["tank/media/photos@import"],
            id="snapshot-recursive-only-where-it-exists",
        ),
        pytest.param(
            "tank/media@gone",
            ("destroy",),
            ["nothing: no snapshot tank/media@gone (zfs will refuse)"],
            id="snapshot-missing",
        ),
        pytest.param(
            "tank/media",
            ("destroy", "recursive"),
            EVERYTHING_UNDER_MEDIA,
            id="dataset-recursive-everything-under-it",
        ),
        pytest.param(
            "tank/media",
            ("destroy",),
            [
                "nothing: zfs refuses to destroy tank/media without recursive; it has "
                "3 datasets and 8 snapshots under it"
            ],
            id="dataset-with-dependents-refused",
        ),
        pytest.param(
            "tank/media/photos",
            ("destroy",),
            [
                "nothing: zfs refuses to destroy tank/media/photos without recursive; it has "
                "1 dataset and 3 snapshots under it"
            ],
            id="dataset-counts-singular",
        ),
        pytest.param("tank/scratch", ("destroy",), ["tank/scratch"], id="empty-dataset"),
        pytest.param(
            "tank/scratch", ("destroy", "recursive"), ["tank/scratch"], id="empty-recursive"
        ),
    ],
)
def test_destroy_lists_what_zfs_destroy_nv_would(
    resource: str, args: tuple[str, ...], lines: list[str]
) -> None:
    assert _describe(resource, *args) == lines


@pytest.mark.parametrize(
    ("resource", "args", "lines"),
    [
        pytest.param(
            "tank/media@weekly",
            ("rollback",),
            [REFUSED_ROLLBACK, "tank/media@monday", "tank/media@daily", "tank/media@adhoc"],
            id="newer-refused-in-creation-order",
        ),
        pytest.param(
            "tank/media@monday",
            ("rollback", "recursive"),
            [
                "tank/media: every change since tank/media@monday is discarded",
                "and the newer snapshots are destroyed:",
                "tank/media@daily",
                "tank/media@adhoc",
            ],
            id="newer-destroyed-when-recursive",
        ),
        pytest.param(
            "tank/media@adhoc",
            ("rollback",),
            ["tank/media: every change since tank/media@adhoc is discarded"],
            id="latest-snapshot",
        ),
        pytest.param(
            "tank/media/photos@daily",
            ("rollback", "recursive"),
            [
                "tank/media/photos: every change since tank/media/photos@daily is discarded",
                "and the newer snapshots are destroyed:",
                "tank/media/photos@import",
            ],
            id="child-datasets-snapshots-untouched",
        ),
        pytest.param(
            "tank/media@gone",
            ("rollback",),
            ["nothing: no snapshot tank/media@gone (zfs will refuse)"],
            id="missing",
        ),
    ],
)
def test_rollback_names_the_snapshots_newer_than_its_target(
    resource: str, args: tuple[str, ...], lines: list[str]
) -> None:
    assert _describe(resource, *args) == lines


def test_creation_order_not_listing_order_decides_what_is_newer() -> None:
    """zfs lists snapshots by creation, but the preview must not depend on it."""
    shuffled = as_tree("".join(reversed(MEDIA.splitlines(keepends=True))))
    operation = _operation("tank/media@monday", "rollback", "recursive")
    result = RunResult((), 0, shuffled, "", False, 0)
    assert zfs.describe_preview(operation, result)[2:] == ["tank/media@daily", "tank/media@adhoc"]


@pytest.mark.parametrize(
    ("resource", "args", "line"),
    [
        pytest.param(
            "tank/media",
            ("destroy",),
            "nothing: no dataset tank/media (zfs will refuse)",
            id="destroy",
        ),
        pytest.param(
            "tank/media@s",
            ("rollback",),
            "nothing: no snapshot tank/media@s (zfs will refuse)",
            id="rollback",
        ),
    ],
)
def test_a_listing_without_the_target_previews_nothing(
    resource: str, args: tuple[str, ...], line: str
) -> None:
    result = RunResult((), 0, "noise\n", "", False, 0)
    assert zfs.describe_preview(_operation(resource, *args), result) == [line]


def _approval() -> Approval:
    operation = _operation("tank/media", "destroy", "recursive")
    return Approval(
        id="ap-0123456789abcdef",
        token_hash="0" * 64,
        requester_cn="librarian-1",
        requester_fingerprint="f" * 64,
        requester_unix_user="librarian",
        operation=operation.name,
        kind=operation.kind,
        resource=operation.resource,
        args=operation.args,
        digest=operation.digest(),
        reason=None,
        admin_only=False,
        approvals_required=1,
        created_at=0,
        expires_at=300,
    )


def test_the_message_shows_the_preview_before_how_to_answer() -> None:
    text = message(_approval(), "TOKEN", "host", _describe("tank/media", "destroy", "recursive"))
    body, answer = text.split("\n\nWould affect:\n")
    assert "Operation: zfs-destroy" in body
    section, reply = answer.split("\n\n")
    assert section.splitlines() == [f"  {name}" for name in EVERYTHING_UNDER_MEDIA]
    assert reply.startswith("Reply APPROVE TOKEN")


def test_a_long_preview_is_capped_with_a_count() -> None:
    names = [f"tank/big/d{index}" for index in range(47)]
    section = message(_approval(), "TOKEN", "host", names).split("Would affect:\n")[1]
    shown = section.split("\n\n")[0].splitlines()
    assert shown == [f"  {name}" for name in names[:20]] + ["  ... and 27 more"]


def test_no_preview_no_section() -> None:
    assert "Would affect" not in message(_approval(), "TOKEN", "host")
