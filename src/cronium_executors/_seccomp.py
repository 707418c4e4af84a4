"""A seccomp profile for job containers: the engine's own default, with namespaces closed.

Docker's default profile lets ``clone`` make no new namespace and refuses ``unshare`` and
``setns`` to a process without ``CAP_SYS_ADMIN`` (which jobs never have). Podman's default
(``/usr/share/containers/seccomp.json``, from containers-common) allows all three outright, so
a job could ``unshare -r`` into a user namespace of its own and be "root" there, the first step
of most container escapes (``mount``, cgroup ``release_agent``). :func:`harden` takes a
profile in the OCI/Docker JSON format and:

- removes ``unshare``, ``setns``, ``clone``, ``clone3``, ``mount``, ``umount``, ``umount2`` and
  ``pivot_root`` from every unconditional allow rule;
- allows ``clone`` only without namespace flags (the masked comparison Docker uses);
- answers ``clone3`` with ENOSYS, so that the C library falls back to ``clone``;
- answers the others with EPERM.

Everything else in the engine's profile stays as it is.
"""

from __future__ import annotations

import copy
import errno
import json
from pathlib import Path
from typing import Any

__all__ = ["CLONE_NAMESPACE_FLAGS", "PODMAN_DEFAULT", "harden", "hardened_podman_profile"]

#: CLONE_NEWNS (0x20000) | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (0x2000000 to
#: 0x40000000): the value Docker's profile masks ``clone``'s flags with
CLONE_NAMESPACE_FLAGS = 0x7E020000
CLOSED = ("unshare", "setns", "clone", "clone3", "mount", "umount", "umount2", "pivot_root")
PODMAN_DEFAULT = (Path("/etc/containers/seccomp.json"), Path("/usr/share/containers/seccomp.json"))


def _unconditional(rule: dict[str, Any]) -> bool:
    return rule.get("action") == "SCMP_ACT_ALLOW" and not rule.get("args")


def harden(profile: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``profile`` with the namespace syscalls closed (see the module docstring)."""
    out = copy.deepcopy(profile)
    rules: list[dict[str, Any]] = []
    for rule in out.get("syscalls", []):
        listed = rule.get("names", [])
        closing = set(listed) & set(CLOSED)
        # drop them from unconditional allows, and unshare/setns from every rule (conditional
        # ones too): the rules appended below decide for all of them
        if closing and (_unconditional(rule) or closing & {"unshare", "setns"}):
            names = [n for n in listed if n not in CLOSED]
            if not names:
                continue
            rule = {**rule, "names": names}
        rules.append(rule)
    rules += [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {
                    "index": 0,
                    "value": CLONE_NAMESPACE_FLAGS,
                    "valueTwo": 0,
                    "op": "SCMP_CMP_MASKED_EQ",
                },
            ],
            "comment": "cronium: clone without new namespaces",
        },
        {
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.ENOSYS,
            "comment": "cronium: the C library falls back to clone",
        },
        {
            "names": [n for n in CLOSED if n not in ("clone", "clone3")],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EPERM,
            "comment": "cronium: no namespaces, no mounts",
        },
    ]
    out["syscalls"] = rules
    return out


def hardened_podman_profile(directory: Path) -> Path | None:
    """Write Podman's default profile, hardened, into ``directory``; None when this host has
    no Podman default profile to start from."""
    for source in PODMAN_DEFAULT:
        if source.is_file():
            profile = json.loads(source.read_text())
            break
    else:
        return None
    target = directory / "cronium-seccomp.json"
    target.write_text(json.dumps(harden(profile), indent=1))
    target.chmod(0o644)
    return target
