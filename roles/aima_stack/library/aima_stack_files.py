#!/usr/bin/python
"""Ansible module: put the stack's directories and small files in place in one call."""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import stat
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: aima_stack_files
short_description: Put directories and small files in place, with owner and mode, in one call
description:
  - Creates the given directories and writes the given files, each with its owner, group and
    mode, and changes only what differs. A file's new content is written to a temporary file in
    the same directory, with its final owner and mode before any byte is written, and renamed
    over the old one (readers see the old or the new file, never a part).
  - One call instead of a C(file) or C(template) task per path, each of which costs a round trip
    to the host (two for a template whose content is unchanged).
  - File contents are never returned or logged (they are secrets for most of the stack's files);
    the result lists the paths that changed.
options:
  directories:
    description: Directories to create (their parent must exist), in order.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path., type: path, required: true}
      mode: {description: Octal mode as a string, e.g. C("0750")., type: str, required: true}
      owner: {description: User name or numeric id., type: str, default: root}
      group: {description: Group name or numeric id., type: str, default: root}
  files:
    description: Files to write, after the directories.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path., type: path, required: true}
      content: {description: The whole content (UTF-8)., type: str, required: true}
      mode: {description: Octal mode as a string, e.g. C("0600")., type: str, required: true}
      owner: {description: User name or numeric id., type: str, default: root}
      group: {description: Group name or numeric id., type: str, default: root}
      validate:
        description:
          - A command that checks the new content before it replaces the file, C(%s) standing
            for the temporary file's path (as the template module's C(validate)). A non-zero
            exit leaves the old file in place and fails with the command's output. Not run in
            check mode.
        type: str
author: AIMA deployment maintainers
"""

RETURN = r"""
changed_paths:
  description: The directories and files created or changed (content, owner, group or mode).
  returned: always
  type: list
  elements: str
"""

_ENTRY = {
    "path": {"type": "path", "required": True},
    "mode": {"type": "str", "required": True},
    "owner": {"type": "str", "default": "root"},
    "group": {"type": "str", "default": "root"},
}


class _Failure(Exception):
    """A request this module refuses, with the reason for the operator."""


def _numeric_id(name: str, kind: str) -> int:
    """A user's (KIND "user") or group's ("group") numeric id, from its name or its number."""
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
    except KeyError as exc:
        raise _Failure(f"no {kind} named {name!r} on the host") from exc


def _mode(entry: dict[str, Any]) -> int:
    text = entry["mode"]
    try:
        mode = int(text, 8)
    except ValueError as exc:
        raise _Failure(f"{entry['path']}: mode {text!r} is not an octal number") from exc
    if mode > 0o7777:
        raise _Failure(f"{entry['path']}: mode {text!r} is out of range")
    return mode


def _wanted_attributes(entry: dict[str, Any]) -> tuple[int, int, int]:
    """The entry's mode, uid and gid."""
    return (_mode(entry), _numeric_id(entry["owner"], "user"),
            _numeric_id(entry["group"], "group"))


def _set_attributes(path: str, info: os.stat_result, wanted: tuple[int, int, int],
                    check_mode: bool) -> bool:
    """Owner, group and mode of an existing PATH as WANTED; whether anything differed."""
    mode, uid, gid = wanted
    if stat.S_IMODE(info.st_mode) == mode and info.st_uid == uid and info.st_gid == gid:
        return False
    if not check_mode:
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    return True


def _directory(entry: dict[str, Any], check_mode: bool) -> bool:
    path = entry["path"]
    wanted = _wanted_attributes(entry)
    mode, uid, gid = wanted
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if not check_mode:
            os.mkdir(path, 0o700)  # tightened first, opened up below
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        return True
    if not stat.S_ISDIR(info.st_mode):
        raise _Failure(f"{path} exists and is not a directory")
    return _set_attributes(path, info, wanted, check_mode)


def _file(entry: dict[str, Any], module: AnsibleModule) -> bool:
    check_mode = module.check_mode
    path = entry["path"]
    attributes = _wanted_attributes(entry)
    mode, uid, gid = attributes
    wanted = entry["content"].encode("utf-8")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise _Failure(f"{path} exists and is not a regular file")
    if info is not None and info.st_size == len(wanted):
        with open(path, "rb") as current:
            same_content = current.read() == wanted
    else:
        same_content = False
    if same_content:
        assert info is not None
        return _set_attributes(path, info, attributes, check_mode)
    if check_mode:
        return True
    directory = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".aima-")
    try:
        # Owner and mode before the content: a secret is never readable by anyone else.
        os.fchown(handle, uid, gid)
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as out:
            out.write(wanted)
            out.flush()
            os.fsync(out.fileno())
        if entry.get("validate"):
            _validate(module, path, entry["validate"], temporary)
        os.rename(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return True


def _validate(module: AnsibleModule, path: str, command: str, temporary: str) -> None:
    if "%s" not in command:
        raise _Failure(f"{path}: validate {command!r} has no %s for the file to check")
    argv = [temporary if word == "%s" else word.replace("%s", temporary)
            for word in shlex.split(command)]
    rc, out, err = module.run_command(argv)
    if rc != 0:
        reason = (err or out).strip().replace(temporary, path)
        raise _Failure(f"{path}: the new content failed its check ({command}), the old file is "
                       f"kept: {reason}")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "directories": {"type": "list", "elements": "dict", "default": [],
                            "options": _ENTRY},
            "files": {"type": "list", "elements": "dict", "default": [],
                      "options": {**_ENTRY,
                                  "content": {"type": "str", "required": True, "no_log": True},
                                  "validate": {"type": "str"}}},
        },
        supports_check_mode=True,
    )
    changed_paths: list[str] = []
    try:
        for entry in module.params["directories"]:
            if _directory(entry, module.check_mode):
                changed_paths.append(entry["path"])
        for entry in module.params["files"]:
            if _file(entry, module):
                changed_paths.append(entry["path"])
    except (_Failure, OSError) as exc:
        module.fail_json(msg=str(exc), changed_paths=changed_paths,
                         changed=bool(changed_paths))
    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths)


if __name__ == "__main__":
    main()
