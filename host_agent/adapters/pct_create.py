"""`pct create`: a new container from an allowlisted template, with allowlisted settings.

    {"kind": "pct", "resource": "105",
     "args": ["create", "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
              "hostname=web1", "memory=512", "net0=name=eth0,bridge=vmbr0,ip=dhcp"]}

The predecessor's pct-create-wrapper checked the VMID, the template and a flag list,
but its list let a caller mount host paths (`rootfs`), turn container features on,
make the container privileged, or read a host file as root (`ssh-public-keys`). Here
a setting is `NAME=VALUE` (never an option the caller spells), NAME must be one of
CREATE_FLAGS, whose values have a fixed pattern each, and `[pct] allowed_create_flags`;
the container is always unprivileged. host-agent-pct checks all of it again as root
(its FLAG_PATTERNS table is this one; a test keeps them equal).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

from host_agent.adapters.base import args_schema, text_schema
from host_agent.config import PctConfig
from host_agent.errors import ValidationError

# Every setting a caller may ever give, and the whole-value pattern each must match.
CREATE_FLAGS: Mapping[str, str] = MappingProxyType(
    {
        "hostname": r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}",
        "memory": r"[1-9][0-9]{0,6}",
        "swap": r"[0-9]{1,7}",
        "cores": r"[1-9][0-9]{0,2}",
        "cpulimit": r"[0-9]{1,3}",
        "cpuunits": r"[1-9][0-9]{0,5}",
        "net0": r"[A-Za-z0-9=,./:-]{1,200}",
        "net1": r"[A-Za-z0-9=,./:-]{1,200}",
        "onboot": r"[01]",
        "start": r"[01]",
        "storage": r"[A-Za-z][A-Za-z0-9_-]{0,63}",
        "pool": r"[A-Za-z0-9_-]{1,64}",
        "tags": r"[A-Za-z0-9_.;-]{1,128}",
        "nameserver": r"[0-9A-Fa-f.:]{2,45}",
        "searchdomain": r"[A-Za-z0-9.-]{1,253}",
        "description": r"[A-Za-z0-9 ._,:/-]{1,200}",
    }
)
# Settings no configuration may allow, and why: each reaches the host itself.
NEVER: Mapping[str, str] = MappingProxyType(
    {
        "rootfs": "can bind a host path as the container's root",
        "mp": "mount points bind host paths into the container",
        "dev": "passes host devices through",
        "features": "nesting, fuse, mknod and keyctl reach past the container",
        "unprivileged": "containers are always created unprivileged",
        "hookscript": "runs a script on the host as root",
        "ssh-public-keys": "is a host file pct reads as root",
        "password": "would put a secret in argv and the audit log",
        "restore": "restores over an existing container",
        "lxc": "raw LXC keys reach the host",
    }
)
SETTING = re.compile(r"([a-z][a-z0-9-]{0,31})=(.*)", re.S)
# A Proxmox volume id in a storage's template area, or an absolute file path.
TEMPLATE_VOLUME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}:vztmpl/[A-Za-z0-9._+-]{1,200}")
TEMPLATE_PATH = re.compile(r"(/[A-Za-z0-9._+-]{1,200}){1,16}")
# What an allowed_ostemplates pattern may hold: template names' characters, `*` and `?`.
TEMPLATE_GLOB = re.compile(r"[A-Za-z0-9._+/:*?-]{1,255}")
MAX_TEMPLATE = 255
MAX_SETTING = 256


def never_reason(name: str) -> str | None:
    """Why `name` (a flag name, `mp0`, `net3`...) can never be allowed, or None."""
    if name in NEVER:
        return NEVER[name]
    family = name.rstrip("0123456789")
    return NEVER.get(family) if family != name else None


def check_template(template: str, allowed: Iterable[str]) -> str:
    """The ostemplate: a volume id or an absolute path without '.'/'..' steps, matching
    one of `[pct] allowed_ostemplates` (fnmatch; absent or empty: none)."""
    volume = TEMPLATE_VOLUME.fullmatch(template) is not None
    path = TEMPLATE_PATH.fullmatch(template) is not None and not any(
        step in (".", "..") for step in template.split("/")[1:]
    )
    if not (volume or path):
        raise ValidationError(
            "args[1]",
            "ostemplate must be STORAGE:vztmpl/FILE or an absolute path to the file",
            code="invalid_name",
        )
    if not any(fnmatchcase(template, pattern) for pattern in allowed):
        raise ValidationError(
            "args[1]",
            "this template is not in [pct] allowed_ostemplates",
            code="template_not_allowed",
        )
    return template


def check_settings(settings: Iterable[str], allowed: Iterable[str]) -> tuple[str, ...]:
    """Each `NAME=VALUE`: a known, allowlisted NAME (once) and a VALUE of its pattern."""
    permitted, seen, checked = set(allowed), set(), []
    for index, setting in enumerate(settings, start=2):
        field = f"args[{index}]"
        match = SETTING.fullmatch(setting)
        if match is None:
            raise ValidationError(field, "a setting is NAME=VALUE", code="invalid_argument")
        name, value = match.groups()
        reason = never_reason(name)
        if reason is not None:
            raise ValidationError(field, f"{name} {reason}", code="setting_not_allowed")
        if name not in CREATE_FLAGS or name not in permitted:
            raise ValidationError(
                field, f"{name} is not in [pct] allowed_create_flags", code="setting_not_allowed"
            )
        if name in seen:
            raise ValidationError(field, f"{name} is given twice", code="invalid_argument")
        if not re.fullmatch(CREATE_FLAGS[name], value):
            raise ValidationError(
                field, f"{name} must match {CREATE_FLAGS[name]}", code="invalid_argument"
            )
        seen.add(name)
        checked.append(setting)
    return tuple(checked)


def create_args_schema(config: PctConfig) -> dict[str, Any]:
    """The arguments of `create`: a template an allowlist pattern matches, then the
    allowed settings, each name at most once."""
    templates = "|".join(_glob_pattern(pattern) for pattern in config.allowed_ostemplates)
    template = text_schema(
        "The ostemplate: STORAGE:vztmpl/FILE or an absolute path, one of: "
        + ", ".join(config.allowed_ostemplates),
        max_length=MAX_TEMPLATE,
        pattern=templates,
    )
    allowed = [name for name in CREATE_FLAGS if name in config.allowed_create_flags]
    settings = text_schema(
        "A setting NAME=VALUE, each NAME once: " + ", ".join(allowed),
        max_length=MAX_SETTING,
        pattern="|".join(f"{name}=(?:{CREATE_FLAGS[name]})" for name in allowed) or "(?!)",
    )
    schema = args_schema(
        "The template, then settings", [template, *[settings] * len(allowed)], least=1
    )
    # Each name at most once (what validation refuses as "given twice").
    schema["allOf"] = [
        {"contains": {"type": "string", "pattern": f"^{name}="}, "minContains": 0, "maxContains": 1}
        for name in allowed
    ]
    return schema


def example_template(config: PctConfig) -> str:
    """A template the first allowlist pattern matches, for the schema's example."""
    return config.allowed_ostemplates[0].replace("*", "example").replace("?", "x")


def _glob_pattern(glob: str) -> str:
    """An allowlist pattern as a portable regex accepting only names it matches: `*` and
    `?` stand for template-name characters (never '/', never a '.'/'..' step)."""
    parts = []
    for character in glob:
        if character == "*":
            parts.append("[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,100}")
        elif character == "?":
            parts.append("[A-Za-z0-9_+-]")
        elif character in ".+":
            parts.append("\\" + character)
        else:  # a letter, digit, '_', '-', ':' or '/' (see TEMPLATE_GLOB): itself
            parts.append(character)
    return "".join(parts)
