"""The private Dovecot's runtime folder: short whatever the data folder's path, one per data
folder, and never a folder someone else planted (in /tmp above all)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssgate.dovecot.paths import (
    UnsafeFolder,
    instance_key,
    mail_root,
    make_outside_mail_root,
    outside_mail_root,
    placed_mail_root,
    private_dir,
    runtime_dir,
)

NOBODY = 65534


def test_the_key_names_one_data_folder_whatever_its_spelling(tmp_path: Path) -> None:
    data = tmp_path / ("d" * 200)
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    key = instance_key(data)
    assert len(key) == 12 and int(key, 16) >= 0
    assert instance_key(tmp_path / "link") == key == instance_key(data / ".." / data.name)
    assert instance_key(tmp_path) != key


def test_root_uses_run_and_users_their_session_runtime_or_their_own_tmp_folder(
    tmp_path: Path,
) -> None:
    run, tmp, xdg = tmp_path / "run", tmp_path / "tmp", tmp_path / "xdg"
    for folder in (run, tmp, xdg):
        folder.mkdir()
    xdg.chmod(0o700)
    data = tmp_path / ("d" * 300)
    key = instance_key(data)
    where = {"run_root": run / "mssgate", "tmp": tmp}
    assert runtime_dir(data, uid=0, env={}, **where) == run / "mssgate" / key
    user = NOBODY if os.geteuid() == 0 else os.geteuid()
    if os.geteuid() == 0:
        os.chown(xdg, user, user)
    env = {"XDG_RUNTIME_DIR": str(xdg)}
    assert runtime_dir(data, uid=user, env=env, **where) == xdg / "mssgate" / key
    # Not the spec's folder (readable by others, or someone else's): not used.
    xdg.chmod(0o755)
    assert runtime_dir(data, uid=user, env=env, **where) == tmp / f"mssgate-{user}" / key
    xdg.chmod(0o700)
    assert runtime_dir(data, uid=user + 1, env=env, **where) == tmp / f"mssgate-{user + 1}" / key
    assert runtime_dir(data, uid=user, env={}, **where) == tmp / f"mssgate-{user}" / key
    # However long the data folder's path, Dovecot's longest socket name stays short.
    longest = runtime_dir(data) / "token-login" / "tokenlogin"
    assert len(str(longest).encode()) < 108


def test_runtime_folder_is_created_private(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o1777)
    data = tmp_path / "data"
    path = runtime_dir(
        data, create=True, uid=os.geteuid(), env={}, run_root=tmp_path / "no" / "run", tmp=tmp
    )
    parent = path.parent
    assert parent == tmp / f"mssgate-{os.geteuid()}"
    assert oct(parent.stat().st_mode & 0o777) in ("0o711", "0o700")
    # Again: the existing folders are checked and accepted.
    assert (
        runtime_dir(
            data, create=True, uid=os.geteuid(), env={}, run_root=tmp_path / "no" / "run", tmp=tmp
        )
        == path
    )


@pytest.mark.parametrize("plant", ["symlink", "foreign_owner", "group_writable", "file"])
def test_a_planted_tmp_folder_is_refused_never_followed(tmp_path: Path, plant: str) -> None:
    if os.geteuid() != 0 and plant == "foreign_owner":
        pytest.skip("only root can plant a folder owned by someone else")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    planted = tmp / f"mssgate-{os.geteuid()}"
    if plant == "symlink":
        planted.symlink_to(victim)
    elif plant == "file":
        planted.write_text("")
    else:
        planted.mkdir(mode=0o700)
        if plant == "foreign_owner":
            os.chown(planted, NOBODY, NOBODY)
        else:
            planted.chmod(0o770)
    with pytest.raises(UnsafeFolder, match="remove it"):
        runtime_dir(
            tmp_path / "data", create=True, env={}, run_root=tmp_path / "no" / "run", tmp=tmp
        )
    assert list(victim.iterdir()) == []


def test_private_dir_hands_a_new_folder_to_its_owner(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can create a folder for another user")
    made = private_dir(tmp_path / "x", mode=0o700, uid=NOBODY, gid=NOBODY)
    st = made.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (NOBODY, NOBODY, 0o700)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder every user may traverse (pytest's own tmp root is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mssgate-paths-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_mail_moves_out_only_when_a_parent_outside_the_data_folder_blocks_it(
    open_tmp: Path,
) -> None:
    state = open_tmp / "state"
    top = open_tmp / "top"
    data = top / "clone" / "var"
    data.mkdir(parents=True, mode=0o700)
    top.chmod(0o755)
    place = {"mail_uid": NOBODY, "mail_gid": NOBODY, "state_root": state}
    # Only the data folder itself blocks: the supervisor opens it to the mail group.
    assert mail_root(data, privileged=True, **place) == data / "mail"
    assert mail_root(data, privileged=False, **place) == data / "mail"
    top.chmod(0o700)  # a parent the gateway may not change
    outside = outside_mail_root(data, state_root=state)
    assert mail_root(data, privileged=True, **place) == outside
    assert mail_root(data, privileged=False, **place) == data / "mail"
    # Mail already there (IMAP off before, or a store written by MaildirStore) moves with it.
    (data / "mail" / "a.test" / "bob" / "Maildir" / "new").mkdir(parents=True)
    (data / "mail" / "a.test" / "bob" / "Maildir" / "new" / "1.eml").write_text("x")
    assert make_outside_mail_root(data, state_root=state) is True
    assert (outside / "a.test" / "bob" / "Maildir" / "new" / "1.eml").read_text() == "x"
    assert not (data / "mail").exists()
    token = (data / "mail-placement").read_text()
    assert (outside.parent / "data-folder").read_text() == f"{data}\n{token}"
    assert oct(outside.parent.stat().st_mode & 0o777) == "0o711"
    # Once out, it stays out, whatever the parents' modes later.
    top.chmod(0o755)
    assert mail_root(data, privileged=True, **place) == outside
    assert make_outside_mail_root(data, state_root=state) is False


def test_a_planted_state_folder_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    victim = tmp_path / "victim"
    victim.mkdir()
    state.symlink_to(victim)
    with pytest.raises(UnsafeFolder, match="remove it"):
        make_outside_mail_root(tmp_path / "data", state_root=state)
    assert list(victim.iterdir()) == []


def test_a_data_folder_made_again_at_the_same_path_does_not_inherit_the_mail(
    open_tmp: Path,
) -> None:
    # Review of issue 19: the place outside is named by the data folder's path alone. A data
    # folder removed and made again there (`rm -rf var; make run` in a clone under /root)
    # found the earlier folder's mail, and its new mailboxes of the same addresses read it.
    state = open_tmp / "state"
    top = open_tmp / "top"
    data = top / "clone" / "var"
    data.mkdir(parents=True, mode=0o700)
    top.chmod(0o700)
    place = {"mail_uid": NOBODY, "mail_gid": NOBODY, "state_root": state}
    outside = outside_mail_root(data, state_root=state)
    assert mail_root(data, privileged=True, **place) == outside
    make_outside_mail_root(data, state_root=state)
    (outside / "a.test" / "bob" / "Maildir" / "new").mkdir(parents=True)
    (outside / "a.test" / "bob" / "Maildir" / "new" / "1.eml").write_text("patient data")
    # Its own data folder, at every start and after moves of nothing: the same place.
    assert mail_root(data, privileged=True, **place) == outside
    make_outside_mail_root(data, state_root=state)
    assert placed_mail_root(data, state_root=state) == outside
    shutil.rmtree(data)
    data.mkdir(mode=0o700)  # `mssgate init` again, same path
    for where in (
        lambda: mail_root(data, privileged=True, **place),
        lambda: placed_mail_root(data, state_root=state),
    ):
        with pytest.raises(UnsafeFolder, match="another data folder"):
            where()
    # Nothing was lost: the earlier mail is where it was, for the operator to move.
    assert (outside / "a.test" / "bob" / "Maildir" / "new" / "1.eml").exists()
