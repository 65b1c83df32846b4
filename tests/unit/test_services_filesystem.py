"""Which filesystem a services home lies on, from a mount table and sysfs laid out as Linux has them."""

from pathlib import Path

import pytest

from trainmon.deploy.services.filesystem import Filesystem, filesystem

MOUNTS = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 22 0:25 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw
31 22 7:0 / /mnt/j\\040k rw,relatime shared:6 - ext4 /dev/loop0 rw
32 31 8:1 / /mnt/j\\040k/data rw,relatime shared:7 - xfs /dev/sda1 rw
"""


@pytest.fixture
def system(tmp_path: Path) -> tuple[Path, Path]:
    """A mount table and the sysfs entries it points at: vda (ext4, no journal), loop0 (ext4 with one)."""
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTS)
    sysfs = tmp_path / "sys"
    for numbers, name, journal in (("254:0", "vda", "<none>"), ("7:0", "loop0", "3333"), ("8:1", "sda1", None)):
        device = sysfs / "devices" / "block" / name
        device.mkdir(parents=True)
        (sysfs / "dev" / "block").mkdir(parents=True, exist_ok=True)
        (sysfs / "dev" / "block" / numbers).symlink_to(device)
        if journal is not None:
            (sysfs / "fs" / "ext4" / name).mkdir(parents=True)
            (sysfs / "fs" / "ext4" / name / "journal_task").write_text(journal + "\n")
    return mountinfo, sysfs


def test_the_longest_mount_point_that_holds_the_path_wins(system):
    mountinfo, sysfs = system
    assert filesystem("/srv/x", mountinfo=mountinfo, sysfs=sysfs) == Filesystem("ext4", "/", "vda", False)
    assert filesystem("/mnt/j k/home/clickhouse", mountinfo=mountinfo, sysfs=sysfs) == \
        Filesystem("ext4", "/mnt/j k", "loop0", True)
    assert filesystem("/mnt/j k/data/x", mountinfo=mountinfo, sysfs=sysfs) == Filesystem("xfs", "/mnt/j k/data", "sda1")
    assert filesystem("/tmp/a", mountinfo=mountinfo, sysfs=sysfs) == Filesystem("tmpfs", "/tmp", "")
    # a sibling whose name starts like a mount point is not under it
    assert filesystem("/tmpfoo", mountinfo=mountinfo, sysfs=sysfs).mount_point == "/"


def test_ext4_says_whether_it_has_a_journal(system):
    mountinfo, sysfs = system
    assert str(filesystem("/srv", mountinfo=mountinfo, sysfs=sysfs)) == "ext4 without a journal (vda on /)"
    assert str(filesystem("/mnt/j k", mountinfo=mountinfo, sysfs=sysfs)) == "ext4 with a journal (loop0 on /mnt/j k)"


def test_an_unreadable_system_gives_unknown_not_an_error(tmp_path):
    found = filesystem(tmp_path, mountinfo=tmp_path / "missing", sysfs=tmp_path)
    assert found == Filesystem("unknown", "", "")
    (tmp_path / "mountinfo").write_text(MOUNTS)  # no sysfs: the journal is not known, so nothing is flagged
    assert filesystem("/srv", mountinfo=tmp_path / "mountinfo", sysfs=tmp_path / "nothing").journal is None


def test_this_machine_names_a_mount_that_holds_the_path(tmp_path):
    found = filesystem(tmp_path)
    assert found.kind != "unknown" and str(tmp_path.resolve()).startswith(found.mount_point)
