"""Which registries configuration the agent reads: the runtime process's flags and
environment (adapters/runtime_process.py), containers/image's rule for the files
(adapters/registries_conf.py), and the settings that override them (pinsvc/wiring.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pinsvc.adapters.registries_conf import RegistriesPaths, paths_for, runtime_paths
from pinsvc.adapters.runtime_process import RuntimeProcess, describe
from pinsvc.config import Settings, replace
from pinsvc.wiring import registries_paths

ETC = Path("/etc/containers")
CERTS = (ETC / "certs.d", Path("/etc/docker/certs.d"))
HOME = Path("/root/.config/containers")


@pytest.mark.parametrize(("conf", "conf_dir", "home", "user_file", "expected"), [
    # no flags: the system file, then the system and the user drop-in directories
    ("", "", "/root", False, ("/etc/containers/registries.conf",
                             ("/etc/containers/registries.conf.d", "/root/.config/containers/registries.conf.d"))),
    # a user registries.conf replaces the system one, and only its own drop-in directory counts
    ("", "", "/root", True, ("/root/.config/containers/registries.conf",
                            ("/root/.config/containers/registries.conf.d",))),
    ("", "/x/d", "/root", True, ("/root/.config/containers/registries.conf", ("/x/d",))),
    # flags: exactly those (a flag file hides the user file; a flag directory is the only one)
    ("/x/r.conf", "", "/root", True, ("/x/r.conf",
                                     ("/etc/containers/registries.conf.d", "/root/.config/containers/registries.conf.d"))),
    ("/x/r.conf", "/x/d", "/root", True, ("/x/r.conf", ("/x/d",))),
    ("", "/x/d", "", False, ("/etc/containers/registries.conf", ("/x/d",))),
    # home unknown: no per-user files
    ("", "", "", False, ("/etc/containers/registries.conf", ("/etc/containers/registries.conf.d",))),
])
def test_paths_follow_containers_image(conf, conf_dir, home, user_file, expected):
    paths = paths_for(conf, conf_dir, home, exists=lambda path: user_file)
    assert (str(paths.conf), tuple(map(str, paths.dirs))) == expected
    assert paths.certs_dirs == ((Path(home) / ".config/containers/certs.d",) if home else ()) + CERTS


@pytest.mark.parametrize(("argv", "env", "conf", "conf_dir"), [
    (["crio"], {}, "", ""),
    (["crio", "--registries-conf", "/a.conf", "--registries-conf-dir=/d"], {}, "/a.conf", "/d"),
    (["crio", "-registries-conf=/a.conf"], {"CONTAINER_REGISTRIES_CONF_DIR": "/e"}, "/a.conf", "/e"),
    (["crio", "--registries-conf", "/flag.conf"], {"CONTAINER_REGISTRIES_CONF": "/env.conf"}, "/flag.conf", ""),
    (["crio"], {"CONTAINER_REGISTRIES_CONF": "/env.conf"}, "/env.conf", ""),
    (["crio", "--registries-conf-dirx", "/no", "--", "--registries-conf", "/no"], {}, "", ""),
])
def test_the_runtime_flag_beats_its_environment_variable(argv, env, conf, conf_dir):
    process = RuntimeProcess(1, tuple(argv), env, "")
    assert process.setting("registries-conf", "CONTAINER_REGISTRIES_CONF") == conf
    assert process.setting("registries-conf-dir", "CONTAINER_REGISTRIES_CONF_DIR") == conf_dir


def test_a_running_process_is_read_from_proc(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "CONTAINER_REGISTRIES_CONF_DIR": str(tmp_path / "d")}
    script = "import time; time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", script, "--registries-conf", str(tmp_path / "r.conf")], env=env)
    try:
        deadline = time.monotonic() + 20
        while psutil.Process(proc.pid).cmdline()[-1:] != [str(tmp_path / "r.conf")]:  # exec'd yet?
            assert time.monotonic() < deadline
            time.sleep(0.01)
        paths = runtime_paths(describe(psutil.Process(proc.pid)))
    finally:
        proc.kill()
        proc.wait()
    assert paths == RegistriesPaths(tmp_path / "r.conf", (tmp_path / "d",),
                                    (tmp_path / ".config/containers/certs.d",) + CERTS)


def test_settings_given_win_and_no_process_means_the_defaults(tmp_path):
    given = replace(Settings(), registry={"registries_conf": tmp_path / "r.conf"},
                    reload={"process_name": "no-such-runtime-process"})
    paths = registries_paths(given, tmp_path / "crio.sock")
    assert paths.conf == tmp_path / "r.conf"
    assert paths.dirs[0] == ETC / "registries.conf.d" and paths.certs_dirs[-2:] == CERTS
    all_given = replace(Settings(), registry={"registries_conf": "/r.conf", "registries_conf_dirs": ("/a", "/b"),
                                              "certs_dirs": ("/c",)})
    assert registries_paths(all_given, None) == RegistriesPaths(Path("/r.conf"), (Path("/a"), Path("/b")), (Path("/c"),))
