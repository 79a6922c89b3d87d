"""The CRI-O drop-in: rendering, idempotent atomic writes, foreign and overriding files,
validation through `crio config` (a fake one, and the real one when it is built)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import stat
import tomllib
from pathlib import Path

import pytest

from pinsvc.adapters import dropin as dropin_module
from pinsvc.adapters.dropin import Dropin, crio_read_order, inspect_dropin_file
from pinsvc.dropin_format import HEADER, is_managed, render_dropin
from pinsvc.errors import Conflict, InvalidArgument, Timeout

NAME = "50-pinned-images"
DIGEST = "sha256:" + "ab" * 32
REAL_CRIO = Path.home() / ".cache/pinsvc/bin/crio"

AWKWARD = [
    f"quay.io/openshift/release@{DIGEST}",
    f"Registry.Example.com:5000/a/b/c@{DIGEST}",
    "localhost:5000/x:tag",
    "docker.io/library/busybox*",
    "*pause*",
    'with"quote',
    "back\\slash",
    "single'quote",
    '"""triple',
    "tab\tand\nnewline",
    "ctrl\x01\x7f",
    "unicodé/ü/日本",
    "# not a comment",
    "] , [",
    "",
]


def pinned(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode()
    return tomllib.loads(text)["crio"]["image"]["pinned_images"]


def pin_file(*refs: str) -> str:
    return "[crio.image]\npinned_images = [" + ", ".join(f'"{r}"' for r in refs) + "]\n"


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(drop-in directory, temp dir): siblings on one filesystem, like /etc/crio/crio.conf.d
    and /etc/crio."""
    directory = tmp_path / "crio.conf.d"
    temp = tmp_path / "tmp"
    directory.mkdir()
    temp.mkdir()
    return directory, temp


def make(layout: tuple[Path, Path], **kw) -> Dropin:
    directory, temp = layout
    return Dropin(directory / NAME, temp, **kw)


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def fake_crio(path: Path, body: str) -> str:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return str(path)


# ---- render ----------------------------------------------------------------------------------

def test_render_round_trips_awkward_references() -> None:
    refs = AWKWARD + list(reversed(AWKWARD)) + ["b", "a", "a"]
    text = render_dropin(refs)
    assert pinned(text) == sorted(set(refs))
    assert tomllib.loads(text).keys() == {"crio"}
    assert tomllib.loads(text)["crio"].keys() == {"image"}


def test_render_layout() -> None:
    text = render_dropin(["b", "a", "b"])
    lines = text.splitlines()
    assert lines[0] == HEADER == "# Managed by pinsvc. Do not edit: changes are overwritten."
    assert lines[1].startswith("#") and "pin" in lines[1].lower()
    assert "[crio.image]" in lines
    start = lines.index("pinned_images = [")
    assert [line.strip() for line in lines[start + 1:start + 4]] == ['"a",', '"b",', "]"]
    assert is_managed(text.encode())
    assert render_dropin(["a", "b"]) == text


def test_render_rejects_non_strings() -> None:
    with pytest.raises(InvalidArgument):
        render_dropin(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument):
        render_dropin(["bad\udcff"])


def test_is_managed() -> None:
    assert is_managed(HEADER.encode() + b"\n[crio.image]\n")
    assert not is_managed(b"[crio.image]\npinned_images = []\n")
    assert not is_managed(b"# managed by someone else\n" + HEADER.encode() + b"\n")
    assert not is_managed(HEADER.encode() + b" (edited)\n")
    assert not is_managed(b"")


# ---- write ----------------------------------------------------------------------------------

async def test_write_creates_file_0644(layout) -> None:
    d = make(layout)
    result = await d.write(["b", "a"])
    assert result.changed and not result.removed and result.previous is None
    assert not result.validated
    content = d.path.read_bytes()
    assert pinned(content) == ["a", "b"]
    assert stat.S_IMODE(d.path.stat().st_mode) == 0o644
    assert result.sha256 == hashlib.sha256(content).hexdigest()
    assert listing(layout[0]) == [NAME]
    assert listing(layout[1]) == []


async def test_unchanged_bytes_are_not_written(layout) -> None:
    d = make(layout)
    first = await d.write(["a", "b"])
    before = d.path.stat()
    os.utime(d.path, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))  # an older mtime
    before = d.path.stat()
    result = await d.write(["b", "a", "a"])
    after = d.path.stat()
    assert not result.changed and not result.removed
    assert result.sha256 == first.sha256
    assert result.previous == d.path.read_bytes()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_write_replaces_atomically_and_reports_previous(layout) -> None:
    d = make(layout)
    await d.write(["a"])
    old = d.path.read_bytes()
    inode = d.path.stat().st_ino
    result = await d.write(["a", "c"])
    assert result.changed and result.previous == old
    assert pinned(d.path.read_bytes()) == ["a", "c"]
    assert d.path.stat().st_ino != inode  # renamed in, not rewritten in place


async def test_empty_list_removes_our_file(layout) -> None:
    d = make(layout)
    await d.write(["a"])
    old = d.path.read_bytes()
    result = await d.write([])
    assert result.changed and result.removed and result.previous == old and result.sha256 == ""
    assert not d.path.exists()
    again = await d.write([])
    assert not again.changed and not again.removed and again.previous is None


async def test_empty_list_leaves_a_foreign_file(layout) -> None:
    d = make(layout)
    d.path.write_text(pin_file("admin/image"))
    result = await d.write([])
    assert not result.changed and not result.removed
    assert d.path.read_text() == pin_file("admin/image")
    adopting = make(layout, adopt_foreign=True)
    assert (await adopting.write([])).removed
    assert not d.path.exists()


async def test_foreign_file_is_refused_unless_adopted(layout) -> None:
    d = make(layout)
    d.path.write_text(pin_file("admin/image"))
    with pytest.raises(Conflict) as e:
        await d.write(["a"])
    assert str(d.path) in str(e.value) and "--dropin-adopt-foreign" in str(e.value)
    with pytest.raises(Conflict):
        d.check_writable()
    assert d.path.read_text() == pin_file("admin/image")
    adopted = make(layout, adopt_foreign=True)
    adopted.check_writable()
    result = await adopted.write(["a"])
    assert result.changed and result.previous == pin_file("admin/image").encode()
    assert is_managed(d.path.read_bytes())
    d.check_writable()  # ours now


def test_missing_directory_is_named(tmp_path) -> None:
    d = Dropin(tmp_path / "nope" / NAME, tmp_path)
    with pytest.raises(Conflict, match=str(tmp_path / "nope")):
        d.check_writable()


async def test_temp_dir_inside_the_dropin_dir_is_refused(layout) -> None:
    directory, _ = layout
    for temp in (directory, directory / "sub"):
        temp.mkdir(exist_ok=True)
        d = Dropin(directory / NAME, temp)
        with pytest.raises(Conflict, match="inside the CRI-O drop-in directory"):
            await d.write(["a"])
    assert listing(directory) == ["sub"]


def test_temp_dir_on_another_filesystem_is_refused(layout) -> None:
    directory, _ = layout
    other = next((p for p in (Path("/dev/shm"), Path("/run"), Path("/proc"))
                  if p.is_dir() and p.stat().st_dev != directory.stat().st_dev), None)
    if other is None:
        pytest.skip("no directory on another filesystem")
    with pytest.raises(Conflict, match="same filesystem"):
        Dropin(directory / NAME, other).check_writable()


def test_missing_temp_dir_is_refused(layout) -> None:
    directory, temp = layout
    with pytest.raises(Conflict, match="does not exist"):
        Dropin(directory / NAME, temp / "missing").check_writable()


async def test_restore(layout) -> None:
    d = make(layout)
    first = await d.write(["a"])
    second = await d.write(["b"])
    await d.restore(second.previous)
    assert pinned(d.path.read_bytes()) == ["a"]
    await d.restore(first.previous)  # None: there was no file
    assert not d.path.exists()
    d.path.write_bytes(b"[crio]\n# admin file\n")
    await d.restore(b"[crio]\n# admin file\n")  # already right: a no-op
    assert listing(layout[0]) == [NAME] and listing(layout[1]) == []


def test_remove_leftovers(layout) -> None:
    directory, temp = layout
    (temp / f".pinsvc-{NAME}-0123.tmp").write_text("half")
    (temp / f".pinsvc-{NAME}-validate-x").mkdir()
    (temp / f".pinsvc-{NAME}-validate-x" / NAME).write_text("x")
    (temp / "other-file").write_text("not ours")
    (directory / NAME).write_text("kept")
    d = make(layout)
    assert len(d.remove_leftovers()) == 2
    assert listing(temp) == ["other-file"] and listing(directory) == [NAME]


# ---- read order, overriding and broken files ------------------------------------------------

def test_read_order_is_crio_walk_order(layout) -> None:
    directory, _ = layout
    for rel in ["60-sub/b", "60-sub/a", "50-pinned-images", "50-pinned-images.d/x", "5", ".hidden",
                "Z", "a", "40-sub/zz", "50-pinned-images~"]:
        (directory / rel).parent.mkdir(exist_ok=True)
        (directory / rel).write_text("")
    order = [str(p.relative_to(directory)) for p, err in crio_read_order(directory)]
    assert order == [".hidden", "40-sub/zz", "5", "50-pinned-images", "50-pinned-images.d/x",
                     "50-pinned-images~", "60-sub/a", "60-sub/b", "Z", "a"]


def test_overriding_files(layout) -> None:
    directory, _ = layout
    files = {
        NAME: render_dropin(["ours"]),
        "10-earlier.conf": pin_file("earlier"),
        ".hidden": pin_file("dot"),  # '.' sorts before '5': read before ours
        "40-sub/99.conf": pin_file("earlier-subdir"),
        "60-later.conf": pin_file("later"),
        "50-pinned-images~": pin_file("editor-backup"),  # a backup of ours sorts after it
        "70-dotted": 'crio.image.pinned_images = ["dotted"]\n',
        "80-other.conf": "[crio.image]\npause_image = 'x'\n",
        "85-typo.conf": '[crio]\npinned_images = ["not-in-image"]\n',
        "90-sub/00.conf": pin_file("later-subdir"),
        "95-empty.conf": "[crio.image]\npinned_images = []\n",  # empties our list: overrides
        "99-broken.conf": "[crio.image\n",
    }
    for rel, text in files.items():
        (directory / rel).parent.mkdir(exist_ok=True)
        (directory / rel).write_text(text)
    d = Dropin(directory / NAME, layout[1])
    assert [str(p.relative_to(directory)) for p in d.overriding_files()] == [
        "50-pinned-images~", "60-later.conf", "70-dotted", "90-sub/00.conf", "95-empty.conf"]


def test_no_overriding_files(layout) -> None:
    directory, temp = layout
    (directory / "10-crio.conf").write_text(pin_file("earlier"))
    assert Dropin(directory / NAME, temp).overriding_files() == []
    assert Dropin(directory / "missing" / NAME, temp).overriding_files() == []


def test_broken_files(layout) -> None:
    directory, temp = layout
    (directory / "10-ok.conf").write_text(pin_file("ok"))
    (directory / "20-bad-toml.conf").write_text("[crio.image\npinned_images = [\n")
    (directory / "30-wrong-type.conf").write_text('[crio.image]\npinned_images = "x"\n')
    (directory / "31-wrong-items").write_text("[crio.image]\npinned_images = [1, 2]\n")
    (directory / "32-image-not-table").write_text("[crio]\nimage = 3\n")
    (directory / "40-dangling").symlink_to(directory / "nowhere")
    (directory / "41-dir-link").symlink_to(temp)
    (directory / "42-file-link").symlink_to(directory / "10-ok.conf")
    (directory / "sub").mkdir()
    (directory / "sub" / "latin1").write_bytes(b"# caf\xe9\n")
    os.mkfifo(directory / "50-fifo")
    d = Dropin(directory / NAME, temp)
    broken = {str(p.relative_to(directory)): why for p, why in d.broken_files()}
    assert sorted(broken) == ["20-bad-toml.conf", "30-wrong-type.conf", "31-wrong-items",
                              "32-image-not-table", "40-dangling", "41-dir-link", "50-fifo", "sub/latin1"]
    assert "TOML" in broken["20-bad-toml.conf"]
    assert "not a list of strings" in broken["30-wrong-type.conf"]
    assert "directory" in broken["41-dir-link"]
    assert inspect_dropin_file(directory / "42-file-link") == (True, None)


# ---- validation -----------------------------------------------------------------------------

async def test_temp_files_never_appear_in_the_dropin_dir(layout, tmp_path) -> None:
    """A slow fake crio records the drop-in directory and the candidate directory while the
    write is in flight; the test also polls the drop-in directory meanwhile."""
    directory, temp = layout
    (directory / "10-crio.conf").write_text("[crio]\n")
    (directory / "sub").mkdir()
    (directory / "sub" / "x.conf").write_text(pin_file("x"))
    (directory / "99-link").symlink_to(directory / "10-crio.conf")
    seen = tmp_path / "seen"
    crio = fake_crio(tmp_path / "crio", f"""
        set -e
        cd "$4"
        find . | sort > {seen}.candidate
        cat ./{NAME} > {seen}.content
        readlink ./99-link > {seen}.link
        echo "$@" > {seen}.argv
        ls -A {directory} > {seen}.dropin
        sleep 0.3
    """)
    d = make(layout, crio_binary=crio)
    await d.write(["old"])
    snapshots = set()
    task = asyncio.create_task(d.write(["new"]))
    while not task.done():
        snapshots.add(tuple(listing(directory)))
        await asyncio.sleep(0.01)
    result = task.result()
    assert result.changed and result.validated
    expected = ("10-crio.conf", NAME, "99-link", "sub", "sub/x.conf")
    assert snapshots == {expected}
    assert (seen.with_suffix(".dropin")).read_text().split() == ["10-crio.conf", NAME, "99-link", "sub"]
    assert (seen.with_suffix(".candidate")).read_text().split() == [
        ".", "./10-crio.conf", f"./{NAME}", "./99-link", "./sub", "./sub/x.conf"]
    assert pinned(seen.with_suffix(".content").read_bytes()) == ["new"]
    argv = seen.with_suffix(".argv").read_text().split()
    assert argv[0] == "--config" and argv[2] == "--config-dir" and argv[4] == "config"
    candidate_dir = Path(argv[3])
    assert not candidate_dir.is_relative_to(directory) and candidate_dir.is_relative_to(temp)
    # the symlink in the candidate points at the copy, not at the real directory
    assert Path(seen.with_suffix(".link").read_text().strip()) == candidate_dir / "10-crio.conf"
    assert pinned(d.path.read_bytes()) == ["new"]
    assert listing(temp) == []  # temp file and candidate directory are gone


async def test_failed_validation_keeps_the_old_file(layout, tmp_path) -> None:
    directory, temp = layout
    good = make(layout)
    await good.write(["old"])
    old = good.path.read_bytes()
    inode = good.path.stat().st_ino
    crio = fake_crio(tmp_path / "crio", """
        echo 'time="x" level=info msg="Updating config from drop-in file: '"$4"'/50-pinned-images"' >&2
        echo 'time="x" level=fatal msg="get and merge config: unable to decode configuration '"$4"'/50-pinned-images: toml: bad"' >&2
        exit 1
    """)
    d = make(layout, crio_binary=crio)
    with pytest.raises(Conflict) as e:
        await d.write(["new"])
    message = str(e.value)
    assert "crio rejected" in message and "toml: bad" in message
    assert f"{d.path} (candidate)" in message and str(temp) not in message
    assert d.path.read_bytes() == old and d.path.stat().st_ino == inode
    assert listing(directory) == [NAME]
    assert listing(temp) == []


async def test_cancelled_write_installs_nothing(layout, tmp_path) -> None:
    directory, temp = layout
    started = tmp_path / "started"
    crio = fake_crio(tmp_path / "crio", f"touch {started}\nexec sleep 10\n")
    d = make(layout, crio_binary=crio)
    task = asyncio.create_task(d.write(["new"]))
    while not started.exists():
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert listing(directory) == [] and listing(temp) == []
    assert (await make(layout).write(["next"])).changed  # nothing left locked or half-done


async def test_validation_timeout(layout, tmp_path) -> None:
    crio = fake_crio(tmp_path / "crio", "exec sleep 10\n")
    d = make(layout, crio_binary=crio, validate_timeout_seconds=0.2)
    with pytest.raises(Timeout):
        await d.write(["a"])
    assert listing(layout[0]) == [] and listing(layout[1]) == []


async def test_missing_crio_binary_skips_validation(layout) -> None:
    d = make(layout, crio_binary="pinsvc-no-such-crio-binary")
    result = await d.write(["a"])
    assert result.changed and not result.validated


async def test_validation_gets_a_clean_environment(layout, tmp_path, monkeypatch) -> None:
    """crio reads CONTAINER_* variables as flags; they must not leak into validation."""
    monkeypatch.setenv("CONTAINER_PINNED_IMAGES", "leaked")
    out = tmp_path / "env"
    crio = fake_crio(tmp_path / "crio", f"env > {out}\n")
    await make(layout, crio_binary=crio).write(["a"])
    assert "CONTAINER_PINNED_IMAGES" not in out.read_text()


# ---- the real crio --------------------------------------------------------------------------

real_crio = pytest.mark.skipif(not os.access(REAL_CRIO, os.X_OK),
                               reason=f"{REAL_CRIO} is not built (the devenv installer builds it)")


def crio_effective_pins(directory: Path, main: Path) -> list[str]:
    """The pinned_images `crio config` reports for a main config and a drop-in directory."""
    import subprocess
    out = subprocess.run([str(REAL_CRIO), "--config", str(main), "--config-dir", str(directory), "config"],
                         capture_output=True, check=True, env={"PATH": os.environ["PATH"]}, timeout=30)
    return tomllib.loads(out.stdout.decode())["crio"]["image"].get("pinned_images", [])


@real_crio
async def test_real_crio_refuses_a_wrong_type(layout, monkeypatch) -> None:
    directory, temp = layout
    d = make(layout, crio_binary=str(REAL_CRIO))  # no main config: an empty one is used
    first = await d.write(["old"])
    assert first.validated
    old = d.path.read_bytes()
    monkeypatch.setattr(dropin_module, "render_dropin",
                        lambda images: HEADER + '\n[crio.image]\npinned_images = "x"\n')
    with pytest.raises(Conflict) as e:
        await d.write(["new"])
    assert "incompatible types" in str(e.value) and f"{d.path} (candidate)" in str(e.value)
    assert d.path.read_bytes() == old
    assert listing(directory) == [NAME] and listing(temp) == []


@real_crio
async def test_real_crio_refuses_when_another_file_is_broken(layout) -> None:
    directory, temp = layout
    (directory / "60-admin.conf").write_text('[crio.image]\npinned_images = "x"\n')
    d = make(layout, crio_binary=str(REAL_CRIO))
    with pytest.raises(Conflict) as e:
        await d.write(["a"])
    assert str(directory / "60-admin.conf") in str(e.value)
    assert not d.path.exists()
    assert [p for p, _ in d.broken_files()] == [directory / "60-admin.conf"]


@real_crio
async def test_real_crio_reads_what_we_render_and_in_our_order(layout, tmp_path) -> None:
    """BurntSushi/toml in crio decodes our rendering to the same list, and crio's effective
    list is the last file in our computed read order."""
    directory, temp = layout
    main = tmp_path / "crio.conf"
    main.write_text("")
    d = make(layout, crio_binary=str(REAL_CRIO), crio_config=main)
    assert (await d.write(AWKWARD)).validated  # control characters included
    # `crio config` prints strings Go-quoted (\x01 is not TOML), so compare without them
    refs = [r for r in AWKWARD if r and "\x01" not in r]
    assert (await d.write(refs)).validated
    assert crio_effective_pins(directory, main) == sorted(set(refs))
    (directory / ".hidden").write_text(pin_file("hidden"))
    (directory / "40-sub").mkdir()
    (directory / "40-sub" / "z.conf").write_text(pin_file("earlier-subdir"))
    assert d.overriding_files() == []
    assert crio_effective_pins(directory, main) == sorted(set(refs))
    (directory / "60-sub").mkdir()
    (directory / "60-sub" / "a.conf").write_text(pin_file("later-subdir"))
    (directory / "50-pinned-images~").write_text(pin_file("backup"))
    assert d.overriding_files() == [directory / "50-pinned-images~", directory / "60-sub" / "a.conf"]
    assert crio_effective_pins(directory, main) == ["later-subdir"]
    shutil.rmtree(directory / "60-sub")
    assert crio_effective_pins(directory, main) == ["backup"]
