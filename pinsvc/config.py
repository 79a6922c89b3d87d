"""Agent settings: frozen dataclasses per topic, filled from defaults, a TOML file, the
environment (`PINSVC_<SECTION>_<FIELD>`) and flags (`--<section>-<field>`), in rising order
of precedence. Every field documents its unit in its metadata `help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pinsvc.errors import InvalidArgument
from pinsvc.retry import Backoff

GiB = 1 << 30


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


# An embedded Backoff is set through flat keys: `<prefix>max_attempts`, `<prefix>backoff_factor`...
_BACKOFF_KEYS = {"attempts": "max_attempts", "initial_seconds": "backoff_initial_seconds",
                 "factor": "backoff_factor", "max_seconds": "backoff_max_seconds", "jitter": "backoff_jitter"}


def _backoff(default: Backoff, retried: str, prefix: str = "") -> Any:
    """A topic's retry schedule; `retried` names what it retries (in each key's help)."""
    return field(default=default, metadata={"help": retried, "prefix": prefix})


@dataclass(frozen=True)
class ServerSettings:
    socket: Path = _f(Path("/run/pinsvc/pinsvc.sock"), "unix socket to serve on ('' = none)")
    socket_mode: str = _f("0600", "permissions of the unix socket (octal)")
    socket_group: str = _f("", "group (name or gid) owning the unix socket ('' = unchanged)")
    tcp: str = _f("", "also serve on this TCP address, e.g. 127.0.0.1:9440 ('' = no TCP); needs the tls_* settings (mTLS) unless insecure")
    tls_cert: str = _f("", "PEM certificate (chain) the TCP listener presents ('' = none)")
    tls_key: str = _f("", "PEM private key of tls_cert ('' = none)")
    tls_client_ca: str = _f("", "PEM CA certificate(s) a client certificate must be signed by; clients without one are refused ('' = none)")
    insecure: bool = _f(False, "serve TCP in plaintext without client authentication (tests and labs only)")
    metrics: str = _f("", "serve Prometheus metrics over HTTP at /metrics on this address, e.g. 127.0.0.1:9441 ('' = off)")


@dataclass(frozen=True)
class SpaceSettings:
    enabled: bool = _f(True, "check space before pulling")
    decompression_factor: float = _f(2.0, "bytes on disk per compressed byte pulled")
    min_free_bytes: int = _f(16 * GiB, "bytes that must stay free after the pulls")
    max_usage_percent: float = _f(85.0, "usage after the pulls may not exceed this (kubelet GC high threshold)")
    deadline_seconds: float = _f(30.0, "bound of a whole space check (seconds, 0 = none): images whose manifest no registry served by then fail, naming the endpoint waited on")


@dataclass(frozen=True)
class PullSettings:
    parallelism: int = _f(5, "pulls in flight per request unless the request says otherwise")
    max_parallelism: int = _f(10, "pulls in flight on the node across all requests")
    attempt_timeout_seconds: float = _f(900.0, "bound of one pull attempt, queue time excluded (0 = none)")
    backoff: Backoff = _backoff(Backoff(initial_seconds=1.0, factor=2.0, max_seconds=10.0, jitter=0.2, attempts=5),
                                "pulls of an image")


@dataclass(frozen=True)
class DropinSettings:
    directory: Path = _f(Path("/etc/crio/crio.conf.d"), "CRI-O drop-in directory")
    filename: str = _f("50-pinned-images", "name of the drop-in pinsvc manages")
    temp_dir: Path = _f(Path(""), "where temp files are written before the rename; same filesystem as the directory ('' = its parent)")
    adopt_foreign: bool = _f(False, "overwrite a file at the drop-in path that pinsvc did not write")
    crio_binary: str = _f("crio", "crio binary used to validate a drop-in before installing it ('' = no validation)")
    crio_config: Path = _f(Path("/etc/crio/crio.conf"), "CRI-O main config, for validation")


@dataclass(frozen=True)
class ReloadSettings:
    strategy: str = _f("systemctl", "how to reload CRI-O: systemctl, signal or none")
    systemd_unit: str = _f("crio", "unit reloaded by the systemctl strategy")
    pidfile: Path = _f(Path(""), "pidfile of CRI-O for the signal strategy ('' = find the process)")
    process_name: str = _f("crio", "executable name searched for by the signal strategy")


@dataclass(frozen=True)
class VerifySettings:
    timeout_seconds: float = _f(30.0, "how long to wait for the runtime to report the pins")
    poll_interval_seconds: float = _f(0.5, "longest pause between two reads of the runtime's images (the first are 10 ms apart)")
    drift_interval_seconds: float = _f(300.0, "how often to check that the last verified pins still hold (images removed, drop-in edited) and repair them (0 = never)")


@dataclass(frozen=True)
class RegistrySettings:
    insecure: tuple[str, ...] = _f((), "registry hosts (host:port) treated as insecure, as `insecure = true` in registries.conf would: HTTPS without certificate verification, then plain HTTP")
    pull_secret: Path = _f(Path("/var/lib/kubelet/config.json"), "kubelet pull secret (docker config.json format; CRI-O's global_auth_file, where it finds a mirror's credentials)")
    registries_conf: Path = _f(Path(""), "registries.conf the runtime reads ('' = that of the CRI-O serving cri_endpoint: its --registries-conf or CONTAINER_REGISTRIES_CONF, else $HOME/.config/containers/registries.conf if it exists, else /etc/containers/registries.conf)")
    registries_conf_dirs: tuple[str, ...] = _f((), "registries.conf.d directories, read in order ('' = those of that CRI-O: its --registries-conf-dir or CONTAINER_REGISTRIES_CONF_DIR, else /etc/containers/registries.conf.d and $HOME/.config/containers/registries.conf.d)")
    certs_dirs: tuple[str, ...] = _f((), "certs.d directories of per-registry TLS files, the first with an entry for a host wins ('' = $HOME/.config/containers/certs.d, /etc/containers/certs.d, /etc/docker/certs.d, $HOME being that CRI-O's)")
    timeout_seconds: float = _f(10.0, "bound of one request to one registry endpoint (seconds, 0 = none); a mirror that does not answer in time gives way to the next")
    max_concurrency: int = _f(16, "manifest requests in flight")
    backoff: Backoff = _backoff(Backoff(initial_seconds=0.5, factor=2.0, max_seconds=10.0, jitter=0.0, attempts=3),
                                "manifest and token requests")


@dataclass(frozen=True)
class Settings:
    node_name: str = _f(socket.gethostname(), "name of this node in status")
    cri_endpoint: str = _f("unix:///var/run/crio/crio.sock", "CRI endpoint of the runtime")
    cri_timeout_seconds: float = _f(10.0, "bound of one CRI call other than PullImage")
    cri_connect_wait_seconds: float = _f(2.0, "how long a CRI call first waits for the runtime's socket to connect (again, e.g. after a restart) before failing as unreachable (0 = fail at once)")
    cri_health_interval_seconds: float = _f(5.0, "how often to ask the runtime whether it answers (CRI Version); gRPC health and the status follow it (0 = never: health then says only that the agent serves)")
    cri_fs_info_backoff: Backoff = _backoff(
        Backoff(initial_seconds=0.05, factor=2.0, max_seconds=0.2, jitter=0.0, attempts=5),
        "ImageFsInfo calls that race a pull (a temp file vanishing under CRI-O's walk of its store)",
        prefix="cri_fs_info_")
    state_dir: Path = _f(Path("/var/lib/pinsvc"), "where the state file and manifest cache live")
    log_level: str = _f("info", "debug, info, warning or error")
    log_format: str = _f("text", "text, or json (one object a line, with the trace id of a traced request)")
    otlp_endpoint: str = _f("", "OTLP endpoint for traces, e.g. http://127.0.0.1:4317 (gRPC; OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf for OTLP/HTTP) ('' = OTEL_EXPORTER_OTLP_ENDPOINT; none = off)")
    server: ServerSettings = field(default_factory=ServerSettings)
    space: SpaceSettings = field(default_factory=SpaceSettings)
    pull: PullSettings = field(default_factory=PullSettings)
    dropin: DropinSettings = field(default_factory=DropinSettings)
    reload: ReloadSettings = field(default_factory=ReloadSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)

    @property
    def dropin_path(self) -> Path:
        return self.dropin.directory / self.dropin.filename

    @property
    def dropin_temp_dir(self) -> Path:
        return self.dropin.temp_dir if str(self.dropin.temp_dir) not in ("", ".") else self.dropin.directory.parent


# ---- loading -------------------------------------------------------------------------------

def _sections() -> dict[str, type]:
    """Section name -> settings class, for the nested dataclasses of Settings."""
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings)
            if dataclasses.is_dataclass(hints[f.name]) and hints[f.name] is not Backoff}


class _Leaf(NamedTuple):
    """One setting as files, the environment and flags name it."""

    section: str | None  # None: a top-level setting
    name: str
    kind: type
    help: str
    field: str  # the dataclass field it fills (of the section, or of Settings)
    part: str | None = None  # for the keys of an embedded Backoff: its field


def _leaves_of(section: str | None, cls: type) -> list[_Leaf]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if hints[f.name] is Backoff:
            parts = typing.get_type_hints(Backoff)
            out += [_Leaf(section, f.metadata["prefix"] + _BACKOFF_KEYS[g.name], parts[g.name],
                          f"{f.metadata['help']}: {g.metadata['help']}", f.name, g.name)
                    for g in dataclasses.fields(Backoff)]
        elif section is not None or f.name not in _sections():
            out.append(_Leaf(section, f.name, hints[f.name], f.metadata["help"], f.name))
    return out


def _leaves() -> list[_Leaf]:
    """Every setting: the top-level ones, then each section's."""
    return _leaves_of(None, Settings) + [leaf for name, cls in _sections().items() for leaf in _leaves_of(name, cls)]


def _convert(value: Any, kind: type, name: str) -> Any:
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typing.get_origin(kind) is tuple:
            items = value if isinstance(value, (list, tuple)) else [value]
            return tuple(v.strip() for item in items for v in str(item).split(",") if v.strip())
        if kind is int and isinstance(value, str):
            return int(value, 0)
        return kind(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"setting {name}: {value!r} is not a valid {getattr(kind, '__name__', kind)}") from None


def default_of(leaf: _Leaf) -> Any:
    """The built-in default of a setting."""
    value = getattr(Settings() if leaf.section is None else getattr(Settings(), leaf.section), leaf.field)
    return getattr(value, leaf.part) if leaf.part else value


def _shown(value: Any) -> str:
    """A default as help shows it: byte counts also in GiB/MiB, booleans as true/false."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, int) and value >= 1 << 20:
        return f"{value} = {value / GiB:g} GiB" if value % GiB == 0 else f"{value} = {value / (1 << 20):g} MiB"
    return str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `--config` and one flag per setting (default None = not given: the file, the
    environment or the built-in default, which the help shows, decide)."""
    parser.add_argument("--config", type=Path, help="TOML settings file (sections as below)")
    for leaf in _leaves():
        section, name, kind, help = leaf.section, leaf.name, leaf.kind, leaf.help
        if (shown := _shown(default_of(leaf))) not in ("", "."):
            help = f"{help} (default: {shown})"
        flag = "--" + (f"{section}-{name}" if section else name).replace("_", "-")
        dest = f"{section}__{name}" if section else name
        if kind is bool:
            parser.add_argument(flag, dest=dest, default=None, action=argparse.BooleanOptionalAction, help=help)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, dest=dest, default=None, action="append", help=help + " (repeatable)")
        else:
            parser.add_argument(flag, dest=dest, default=None, help=help)


def load(args: argparse.Namespace | None = None, env: dict[str, str] | None = None,
         file: Path | None = None) -> Settings:
    """Settings from defaults < TOML file < environment < flags. Raises InvalidArgument naming
    the bad setting."""
    env = os.environ if env is None else env
    file = file or (getattr(args, "config", None) if args else None) or (
        Path(env["PINSVC_CONFIG"]) if env.get("PINSVC_CONFIG") else None)
    values: dict[tuple[str | None, str], Any] = {}
    if file:
        try:
            doc = tomllib.loads(Path(file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InvalidArgument(f"settings file {file}: {e}") from e
        known = {(leaf.section, leaf.name) for leaf in _leaves()}
        for key, value in doc.items():
            if isinstance(value, dict) and key in _sections():
                for sub, v in value.items():
                    if (key, sub) not in known:
                        raise InvalidArgument(f"settings file {file}: unknown setting [{key}] {sub}")
                    values[(key, sub)] = v
            elif (None, key) in known:
                values[(None, key)] = value
            else:
                raise InvalidArgument(f"settings file {file}: unknown setting {key}")
    for section, name, *_ in _leaves():
        var = "PINSVC_" + (f"{section}_{name}" if section else name).upper()
        if var in env:
            values[(section, name)] = env[var]
        dest = f"{section}__{name}" if section else name
        if args is not None and getattr(args, dest, None) is not None:
            values[(section, name)] = getattr(args, dest)
    return build(values)


def build(values: dict[tuple[str | None, str], Any]) -> Settings:
    leaves = {(leaf.section, leaf.name): leaf for leaf in _leaves()}
    given: dict[str | None, dict[str, Any]] = {}  # section (None: top level) -> field -> value
    backoffs: dict[tuple[str | None, str], dict[str, Any]] = {}  # (section, field) -> Backoff field -> value
    for (section, name), value in values.items():
        leaf = leaves[(section, name)]
        converted = _convert(value, leaf.kind, f"{section}.{name}" if section else name)
        if leaf.part is None:
            given.setdefault(section, {})[name] = converted
        else:
            backoffs.setdefault((section, leaf.field), {})[leaf.part] = converted
    for (section, name), parts in backoffs.items():
        cls = _sections()[section] if section else Settings
        default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
        given.setdefault(section, {})[name] = dataclasses.replace(default, **parts)
    top = given.get(None, {})
    for section, cls in _sections().items():
        top[section] = cls(**given.get(section, {}))
    settings = Settings(**top)
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    problems = []
    if s.reload.strategy not in ("systemctl", "signal", "none"):
        problems.append(f"reload.strategy {s.reload.strategy!r} is not one of systemctl, signal, none")
    if s.log_format not in ("text", "json"):
        problems.append(f"log_format {s.log_format!r} is not one of text, json")
    if s.pull.parallelism < 1 or s.pull.max_parallelism < 1:
        problems.append("pull.parallelism and pull.max_parallelism must be >= 1")
    for leaf in _leaves():
        if leaf.part is not None:
            backoff = getattr(getattr(s, leaf.section) if leaf.section else s, leaf.field)
            if rule := backoff.problems().get(leaf.part):
                label = f"{leaf.section}.{leaf.name}" if leaf.section else leaf.name
                problems.append(f"{label} {getattr(backoff, leaf.part)} {rule}")
    if not s.verify.drift_interval_seconds >= 0:
        problems.append(f"verify.drift_interval_seconds {s.verify.drift_interval_seconds} must be >= 0 (0 = off)")
    if not s.cri_connect_wait_seconds >= 0:
        problems.append(f"cri_connect_wait_seconds {s.cri_connect_wait_seconds} must be >= 0 (0 = no wait)")
    if not s.cri_health_interval_seconds >= 0:
        problems.append(f"cri_health_interval_seconds {s.cri_health_interval_seconds} must be >= 0 (0 = off)")
    for name, value in (("space.deadline_seconds", s.space.deadline_seconds),
                        ("registry.timeout_seconds", s.registry.timeout_seconds)):
        if not value >= 0:
            problems.append(f"{name} {value} must be >= 0 (0 = none)")
    if s.space.decompression_factor <= 0:
        problems.append(f"space.decompression_factor {s.space.decompression_factor} must be > 0")
    if not 0 < s.space.max_usage_percent <= 100:
        problems.append(f"space.max_usage_percent {s.space.max_usage_percent} must be in (0, 100]")
    if not s.cri_endpoint.startswith(("unix://", "unix:")) and "://" in s.cri_endpoint:
        problems.append(f"cri_endpoint {s.cri_endpoint!r}: only unix:// endpoints are supported")
    try:
        int(s.server.socket_mode, 8)
    except ValueError:
        problems.append(f"server.socket_mode {s.server.socket_mode!r} is not octal")
    tls = {"server.tls_cert": s.server.tls_cert, "server.tls_key": s.server.tls_key,
           "server.tls_client_ca": s.server.tls_client_ca}
    given = [name for name, value in tls.items() if value]
    missing = [name for name in tls if name not in given]
    if s.server.insecure and given:
        problems.append(f"server.insecure (--server-insecure) contradicts {', '.join(given)}: "
                        "serve TCP with mutual TLS or in plaintext, not both")
    elif missing and not s.server.insecure and (s.server.tcp or given):
        flags = " ".join("--" + name.replace(".", "-").replace("_", "-") + " FILE" for name in missing)
        problems.append(
            (f"server.tcp {s.server.tcp!r} requires mutual TLS" if s.server.tcp else "mutual TLS is incomplete")
            + f": missing {', '.join(missing)} ({flags})"
            + ("; or --server-insecure (server.insecure) for plaintext TCP without client authentication"
               if s.server.tcp else ""))
    port = s.server.metrics.rpartition(":")[2]
    if s.server.metrics and (":" not in s.server.metrics or not port.isdigit() or int(port) > 65535):
        problems.append(f"server.metrics {s.server.metrics!r} is not host:port, e.g. 127.0.0.1:9441")
    if "/" in s.dropin.filename or s.dropin.filename in ("", ".", ".."):
        problems.append(f"dropin.filename {s.dropin.filename!r} must be a plain file name")
    if problems:
        raise InvalidArgument(problems)


def replace(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """A copy with some fields changed: replace(s, pull={"parallelism": 3}, node_name="n1")."""
    top = {}
    for key, value in sections.items():
        if isinstance(value, dict):
            top[key] = dataclasses.replace(getattr(settings, key), **value)
        else:
            top[key] = value
    return dataclasses.replace(settings, **top)

