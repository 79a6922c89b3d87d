"""The node's registries configuration, read from disk as the runtime reads it.

`RegistriesConfFiles` reads `registries.conf` and then every `*.conf` file of the drop-in
directories (in byte order of the name, directories in the order given; other names,
subdirectories and a missing directory are ignored; a missing `registries.conf` is an
empty one) and re-reads them whenever any of them changes - a file's mtime, size or inode,
or a drop-in directory's listing - so a new ImageDigestMirrorSet needs no restart. Parsing
and resolution are pure (`pinsvc.mirrors`).

Which files: `runtime_paths` applies containers/image's rule to the CRI-O serving the node's
CRI socket (adapters/runtime_process.py): its `--registries-conf`/`--registries-conf-dir`
flags or `CONTAINER_REGISTRIES_CONF`/`CONTAINER_REGISTRIES_CONF_DIR` variables (CRI-O 1.36
has no crio.conf setting for them), else `$HOME/.config/containers/registries.conf` when it
exists (then only its own drop-in directory), else `/etc/containers/registries.conf` with
`/etc/containers/registries.conf.d` and `$HOME/.config/containers/registries.conf.d`; `$HOME`
being CRI-O's. CRI-O reads the files at start and at each reload (SIGHUP), and on file
changes only with `[crio.image] auto_reload_registries`.

`find_tls_files` and `ssl_context` give an endpoint's `certs.d` TLS material.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pinsvc.adapters.runtime_process import RuntimeProcess
from pinsvc.errors import StateError
from pinsvc.mirrors.certs import TlsFiles, tls_files
from pinsvc.mirrors.config import RegistriesConfig, load
from pinsvc.mirrors.resolve import Endpoint, resolve
from pinsvc.refs import ImageRef

log = logging.getLogger(__name__)

DEFAULT_REGISTRIES_CONF = Path("/etc/containers/registries.conf")
DEFAULT_REGISTRIES_CONF_DIRS = (Path("/etc/containers/registries.conf.d"),)
DEFAULT_CERTS_DIRS = (Path("~/.config/containers/certs.d"), Path("/etc/containers/certs.d"),
                      Path("/etc/docker/certs.d"))
"""The runtime's certs.d directories, first match wins (`~` is the agent's home: root's,
like CRI-O's, on a node)."""
USER_DIR = Path(".config/containers")
"""Under a home directory: the per-user registries.conf, registries.conf.d and certs.d."""


@dataclass(frozen=True)
class RegistriesPaths:
    """Where a runtime reads its registries configuration and per-host TLS material."""

    conf: Path
    dirs: tuple[Path, ...]
    certs_dirs: tuple[Path, ...]

    def __str__(self) -> str:
        return (f"{self.conf} + {', '.join(map(str, self.dirs)) or 'no drop-in directory'}; "
                f"certs.d {', '.join(map(str, self.certs_dirs))}")


def paths_for(conf: str = "", conf_dir: str = "", home: str = "",
              exists: Callable[[Path], bool] = Path.is_file) -> RegistriesPaths:
    """The files of a runtime started with `--registries-conf` `conf` and
    `--registries-conf-dir` `conf_dir` ("" = not given) whose home directory is `home` ("" =
    unknown: no per-user files), by containers/image's rule (`sysregistriesv2`
    `newConfigWrapperWithHomeDir`, `docker.dockerCertDir`): a per-user registries.conf that
    `exists` replaces the system one and its drop-in directory then is the only one."""
    user = Path(home) / USER_DIR if home else None
    certs = ((user / "certs.d",) if user else ()) + DEFAULT_CERTS_DIRS[1:]
    if conf:
        main = Path(conf)
    elif user and exists(user / "registries.conf"):
        return RegistriesPaths(user / "registries.conf", (Path(conf_dir) if conf_dir else user / "registries.conf.d",),
                               certs)
    else:
        main = DEFAULT_REGISTRIES_CONF
    if conf_dir:
        dirs: tuple[Path, ...] = (Path(conf_dir),)
    else:
        dirs = DEFAULT_REGISTRIES_CONF_DIRS + ((user / "registries.conf.d",) if user else ())
    return RegistriesPaths(main, dirs, certs)


def runtime_paths(process: RuntimeProcess | None) -> RegistriesPaths:
    """The files the runtime `process` reads (see `paths_for`); without one, those of a
    runtime started without flags whose home is the agent's own."""
    if process is None:
        return paths_for(home=os.path.expanduser("~"))
    return paths_for(process.setting("registries-conf", "CONTAINER_REGISTRIES_CONF"),
                     process.setting("registries-conf-dir", "CONTAINER_REGISTRIES_CONF_DIR"), process.home)

_Signature = tuple[tuple[str, tuple[int, int, int, int] | None], ...]


class RegistriesConfFiles:
    """`registries.conf` plus drop-in directories, re-read when they change."""

    def __init__(self, path: Path = DEFAULT_REGISTRIES_CONF,
                 dirs: Sequence[Path] = DEFAULT_REGISTRIES_CONF_DIRS) -> None:
        self.path = Path(path)
        self.dirs = tuple(Path(d) for d in dirs)
        self._signature: _Signature | None = None
        self._config = RegistriesConfig()

    def current(self) -> RegistriesConfig:
        """The configuration as the files hold it now (re-read only after a change).
        Raises `StateError` naming the file when one cannot be read or is malformed."""
        files = [self.path, *self._drop_ins()]
        signature = tuple((str(f), _stat(f)) for f in files)
        if signature != self._signature:
            texts = [(str(f), text) for f in files if (text := _read(f)) is not None]
            main = texts.pop(0) if texts and texts[0][0] == str(self.path) else None
            self._config = load(main, texts)  # raises before the signature is kept
            self._signature = signature
            log.info("registries configuration read from %s", ", ".join(self._config.sources) or "no file")
        return self._config

    def resolve(self, ref: ImageRef) -> tuple[Endpoint, ...]:
        """The endpoints the runtime tries for `ref`, in order (`pinsvc.mirrors.resolve`)."""
        return resolve(self.current(), ref)

    def _drop_ins(self) -> list[Path]:
        found = []
        for directory in self.dirs:
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:
                raise StateError(f"registries configuration: cannot list {directory} ({_reason(e)})") from e
            entries.sort(key=lambda e: os.fsencode(e.name))
            found += [Path(e.path) for e in entries if e.name.endswith(".conf") and not _is_dir(e)]
        return found


def find_tls_files(host: str, dirs: Sequence[Path] = DEFAULT_CERTS_DIRS) -> TlsFiles | None:
    """The certs.d material for endpoint `host` (host[:port]): from the first directory of
    `dirs` that has an entry for it; None when none has. Raises `StateError` for an
    unreadable directory or a client certificate without its key (or the reverse)."""
    for base in dirs:
        directory = base.expanduser() / host
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, PermissionError):
            continue  # the runtime skips these and looks in the next directory
        except OSError as e:
            raise StateError(f"certs.d {directory}: cannot list it ({_reason(e)})") from e
        return tls_files(directory, names)
    return None


def ssl_context(tls: TlsFiles | None, *, insecure: bool = False) -> ssl.SSLContext:
    """A client context: the system CAs plus the endpoint's `*.crt`, its first client
    certificate pair, and no verification when the endpoint is `insecure`.

    As the runtime, a CA file without any certificate in it is skipped. Python takes one
    client certificate per context: with several pairs the first (in name order) is
    used, where Go would pick among them by the server's accepted CAs.
    """
    context = ssl.create_default_context()
    for ca in tls.ca_files if tls else ():
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as e:
            log.warning("certs.d %s: skipped, not a readable PEM CA certificate (%s)", ca, _reason(e))
    if tls and tls.client_pairs:
        cert, key = tls.client_pairs[0]
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as e:
            raise StateError(f"certs.d {tls.directory}: cannot load client certificate {cert.name} "
                             f"with key {key.name} ({_reason(e)})") from None
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _stat(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"registries configuration {path}: cannot stat it ({_reason(e)})") from e
    return st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev


def _read(path: Path) -> str | None:
    """The text of `path`; None when it vanished (a file removed after the listing, as the
    runtime, or a missing registries.conf)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise StateError(f"registries configuration {path}: not UTF-8 text") from None
    except OSError as e:
        raise StateError(f"registries configuration {path}: cannot read it ({_reason(e)})") from e


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _reason(error: Exception) -> str:
    """The OS or SSL reason without file contents."""
    return getattr(error, "strerror", None) or getattr(error, "reason", None) or type(error).__name__
