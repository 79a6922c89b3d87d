"""podman for the image tests, and a pod of deploy/kubernetes translated to `podman run`.

The translation is what the kubelet and the container runtime would make of the pod spec,
as far as one container on one host goes: `command` + `args` with the kubelet's `$(VAR)`
expansion, `env` (the downward-API values given by the test), `hostPID`/`hostNetwork`,
the pod's and the container's `securityContext` (user, group, read-only root file system,
capabilities, no privilege escalation; the default seccomp profile is podman's), hostPath
(DirectoryOrCreate made), secret (mode and fsGroup) and emptyDir volumes. Host paths are moved under the test's directories by
`paths`, on both sides of each mount and in every argument, so the container sees the same
path the host does (as on a node, where the DaemonSet mounts each host path at itself).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
from pathlib import Path

PODMAN = shutil.which("podman") or "podman"


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """`podman ARGS`, output captured as text.

    runc, not crun: crun 1.8 refuses hybrid cgroup hosts (cgroup v1 controllers and a
    cgroup2 mount with one), like the development machines. `run` gets this process's
    open-file limits and 4096 processes: podman's defaults for root (1048576) need
    CAP_SYS_RESOURCE to set."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args and args[0] == "run":
        args = ("run", "--ulimit", f"nofile={soft}:{hard}", "--ulimit", "nproc=4096:4096", *args[1:])
    argv = [PODMAN, "--runtime", "runc", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion (unknown names stay as they are)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def move(text: str, paths: dict[str, str]) -> str:
    """`text` with each path of `paths` replaced by its test location: whole path
    components only (`/etc/crio` in `unix:///etc/crio/x` but not in `/etc/crio2`), longest
    first, in one pass."""
    if not paths:
        return text
    keys = "|".join(re.escape(k) for k in sorted(paths, key=len, reverse=True))
    return re.sub(rf"(?<![\w.-])({keys})(?=/|$|[\s\"':])", lambda m: paths[m.group(1)], text)


def run_args(pod: dict, container: dict, *, env: dict[str, str], paths: dict[str, str],
             secrets: dict[str, Path]) -> list[str]:
    """`podman run` options (without the image and command) for `container` of `pod`.

    `env` gives the downward-API variables (`valueFrom`); `paths` moves host paths (see
    `move`); `secrets` maps a secret's name to a host directory holding its files, which get the
    volume's `defaultMode` and the pod's `fsGroup` as their group."""
    args: list[str] = []
    if pod.get("hostPID"):
        args.append("--pid=host")
    args.append("--network=host" if pod.get("hostNetwork") else "--network=none")
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    if "runAsUser" in security:
        args += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    capabilities = security.get("capabilities", {})
    args += [f"--cap-drop={c}" for c in capabilities.get("drop", [])]
    args += [f"--cap-add={c}" for c in capabilities.get("add", [])]
    for variable in container.get("env", []):
        value = variable["value"] if "value" in variable else env[variable["name"]]
        args += ["--env", f"{variable['name']}={value}"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    targets: set[str] = set()
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        target = move(mount["mountPath"], paths)
        if target in targets:  # two host paths moved to one test directory
            continue
        targets.add(target)
        mode = "ro" if mount.get("readOnly") else "rw"
        if "hostPath" in volume:
            source = move(volume["hostPath"]["path"], paths)
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                Path(source).mkdir(parents=True, exist_ok=True)  # the kubelet's part
            args += ["--volume", f"{source}:{target}:{mode}"]
        elif "secret" in volume:
            source = secrets[volume["secret"]["secretName"]]
            for file in source.iterdir():  # what the kubelet does with a secret's files
                file.chmod(volume["secret"].get("defaultMode", 0o644))
                os.chown(file, 0, pod.get("securityContext", {}).get("fsGroup", 0))
            args += ["--volume", f"{source}:{target}:ro"]
        elif "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit", "64Mi").replace("Mi", "m")
            args += ["--tmpfs", f"{target}:rw,size={size},mode=1777"]
        else:
            raise AssertionError(f"volume kind of {volume} is not translated")
    return args


def command(container: dict, *, env: dict[str, str], paths: dict[str, str]) -> list[str]:
    """The container's command and args, `$(VAR)`-expanded and with host paths moved."""
    return [move(expand(a, env), paths) for a in container.get("command", []) + container.get("args", [])]
