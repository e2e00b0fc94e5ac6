#!/usr/bin/python3
"""docker-allowlist: only allowed sources reach the ports Docker publishes.

Installed by the Ansible role docker_host from docker_host_allowed_sources; edit that variable,
not this host's copy. A published port is reached through DNAT: the packets cross the FORWARD
chain, where Docker jumps to DOCKER-USER first and leaves that chain to the operator. This
script keeps one chain, AIMA-ALLOWLIST, jumped to from the top of DOCKER-USER, in iptables and
ip6tables:

    -A AIMA-ALLOWLIST -i docker0 -j RETURN       containers on this host are never filtered
    -A AIMA-ALLOWLIST -i br-+ -j RETURN
    -A AIMA-ALLOWLIST -s <allowed network> -j RETURN     one per network of that family
    -A AIMA-ALLOWLIST -m conntrack --ctstate DNAT --ctdir ORIGINAL -j DROP

Only connections that were destination-NATed (published ports) are dropped, in their original
direction; everything else (egress of containers, their replies, traffic between containers)
returns to DOCKER-USER untouched. A family with no allowed network drops all of its DNAT'd
traffic: the list is an allow-list per family. The script also creates DOCKER-USER and the
FORWARD jump to it when they are missing (at boot it runs before dockerd); Docker keeps both.

    docker-allowlist apply [--config FILE]   (re)build the chain and the jump; idempotent
    docker-allowlist remove                  delete the jump and the chain
    docker-allowlist rules [--config FILE]   print the rules, change nothing

apply and remove print one JSON line, {"changed": ...}, for Ansible. Only the standard library.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

CHAIN = "AIMA-ALLOWLIST"
DOCKER_USER = "DOCKER-USER"
DEFAULT_CONFIG = "/etc/docker/allowlist.json"
# Docker's bridges (the default one and user-defined networks): traffic from containers.
CONTAINER_INTERFACES = ("docker0", "br-+")
JUMP = f"-A {DOCKER_USER} -j {CHAIN}"
FORWARD_JUMP = f"-A FORWARD -j {DOCKER_USER}"

Runner = Callable[[Sequence[str], str | None], subprocess.CompletedProcess[str]]


class AllowlistError(Exception):
    """A failure with a message meant for the operator."""


class ToolMissing(AllowlistError):
    """iptables/ip6tables is not installed."""


class Family(NamedTuple):
    version: int
    iptables: str
    restore: str


FAMILIES = (
    Family(4, "iptables", "iptables-restore"),
    Family(6, "ip6tables", "ip6tables-restore"),
)


def parse_network(entry: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One allowed source: an IPv4/IPv6 address or network in CIDR notation, host bits clear."""
    if not isinstance(entry, str):
        raise ValueError(f"not a string but {type(entry).__name__}")
    if not entry or entry != entry.strip():
        raise ValueError("empty or surrounded by blanks")
    if "%" in entry:
        raise ValueError("an IPv6 zone (%...) cannot be matched by a firewall rule")
    try:
        return ipaddress.ip_network(entry, strict=True)
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError("not an IPv4/IPv6 address or CIDR network") from None
    raise ValueError(f"host bits set: the network is {network}")


def parse_sources(sources: object) -> dict[int, list[str]]:
    """Split the allowed sources by family, canonical and de-duplicated; reject bad entries."""
    if not isinstance(sources, list):
        raise AllowlistError(f"'sources' must be a list, not {type(sources).__name__}")
    by_family: dict[int, list[str]] = {4: [], 6: []}
    bad = []
    for entry in sources:
        try:
            network = parse_network(entry)
        except ValueError as exc:
            bad.append(f"{entry!r} ({exc})")
            continue
        text = network.with_prefixlen
        if text not in by_family[network.version]:
            by_family[network.version].append(text)
    if bad:
        raise AllowlistError("not IPv4/IPv6 addresses or networks: " + ", ".join(bad))
    return by_family


def chain_rules(networks: Sequence[str]) -> list[str]:
    """The chain's rules for one family, in iptables -S form."""
    rules = [f"-A {CHAIN} -i {interface} -j RETURN" for interface in CONTAINER_INTERFACES]
    rules += [f"-A {CHAIN} -s {network} -j RETURN" for network in networks]
    rules.append(f"-A {CHAIN} -m conntrack --ctstate DNAT --ctdir ORIGINAL -j DROP")
    return rules


def restore_input(networks: Sequence[str]) -> str:
    """iptables-restore --noflush input that replaces the chain's rules in one transaction."""
    lines = ["*filter", f":{CHAIN} - [0:0]", f"-F {CHAIN}", *chain_rules(networks), "COMMIT"]
    return "\n".join(lines) + "\n"


def run_command(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)


class Netfilter:
    """The filter table of one family, driven through iptables/ip6tables (-w: wait for the lock)."""

    def __init__(self, family: Family, runner: Runner = run_command) -> None:
        self.family = family
        self.runner = runner

    def _run(self, *args: str, tool: str | None = None, stdin: str | None = None) -> str:
        argv = [tool or self.family.iptables, "-w", *args]
        try:
            proc = self.runner(argv, stdin)
        except FileNotFoundError as exc:
            raise ToolMissing(f"{argv[0]} is missing: install the iptables package") from exc
        if proc.returncode != 0:
            message = (proc.stderr or proc.stdout).strip()
            raise AllowlistError(f"`{' '.join(argv)}` failed: {message}")
        return proc.stdout

    def chains(self) -> dict[str, list[str]]:
        """Every chain of the filter table with its rules (iptables -S lines)."""
        chains: dict[str, list[str]] = {}
        for line in self._run("-S").splitlines():
            kind, _, rest = line.partition(" ")
            name = rest.split(" ", 1)[0]
            if kind == "-N":
                chains.setdefault(name, [])
            elif kind == "-A":
                chains.setdefault(name, []).append(line)
        return chains

    def snapshot(self) -> tuple[list[str] | None, list[str] | None, bool]:
        chains = self.chains()
        return chains.get(CHAIN), chains.get(DOCKER_USER), FORWARD_JUMP in chains.get("FORWARD", [])

    def apply(self, networks: Sequence[str]) -> bool:
        before = self.snapshot()
        if before[1] is None:
            # Before Docker's first start (boot): Docker keeps an existing DOCKER-USER.
            self._run("-N", DOCKER_USER)
        # The chain is filled before it is jumped to, atomically: it never lets all through.
        self._run("--noflush", tool=self.family.restore, stdin=restore_input(networks))
        chains = self.chains()
        user_rules = chains.get(DOCKER_USER, [])
        if user_rules[:1] != [JUMP] or user_rules.count(JUMP) != 1:
            self._run("-I", DOCKER_USER, "1", "-j", CHAIN)
            self._delete_jumps(keep_first=True)
        # Docker adds this jump when it sets up its networks; Docker 26 restarted with
        # live-restore and running containers does not re-add a missing one, so the allow-list
        # does not rely on it. Docker does not add a second jump next to this one.
        if FORWARD_JUMP not in chains.get("FORWARD", []):
            self._run("-I", "FORWARD", "1", "-j", DOCKER_USER)
        return self.snapshot() != before

    def remove(self) -> bool:
        before = self.snapshot()
        if before[1]:
            self._delete_jumps(keep_first=False)
        if before[0] is not None:
            self._run("-F", CHAIN)
            self._run("-X", CHAIN)
        return self.snapshot() != before

    def _delete_jumps(self, *, keep_first: bool) -> None:
        rules = self.chains().get(DOCKER_USER, [])
        positions = [number for number, rule in enumerate(rules, start=1) if rule == JUMP]
        if keep_first and positions and positions[0] == 1:
            positions = positions[1:]
        # From the bottom up, so that the numbers of the rules still to delete hold.
        for number in reversed(positions):
            self._run("-D", DOCKER_USER, str(number))


def family_available(family: Family) -> bool:
    """IPv6 may be compiled out or disabled at boot (ipv6.disable=1): nothing to filter then."""
    return family.version == 4 or os.path.exists("/proc/net/if_inet6")


def load_config(path: str) -> dict[int, list[str]]:
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        raise AllowlistError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict) or "sources" not in config:
        raise AllowlistError(f"{path} must be a JSON object with a 'sources' list")
    return parse_sources(config["sources"])


def apply(by_family: dict[int, list[str]], runner: Runner = run_command) -> bool:
    """Build the chain in every family; an empty list allows everyone, i.e. removes it."""
    if not any(by_family.values()):
        return remove(runner)
    changed = False
    for family in FAMILIES:
        if family_available(family):
            changed |= Netfilter(family, runner).apply(by_family[family.version])
    return changed


def remove(runner: Runner = run_command) -> bool:
    changed = False
    for family in FAMILIES:
        if not family_available(family):
            continue
        try:
            changed |= Netfilter(family, runner).remove()
        except ToolMissing:
            continue  # no tool, no rules
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docker-allowlist", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("apply", "remove", "rules"))
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")
    args = parser.parse_args(argv)
    try:
        if args.action == "remove":
            result: dict[str, object] = {"changed": remove()}
        else:
            by_family = load_config(args.config)
            if args.action == "rules":
                for family in FAMILIES:
                    print(f"# {family.iptables}")
                    print(restore_input(by_family[family.version]), end="")
                return 0
            result = {"changed": apply(by_family), "ipv4": by_family[4], "ipv6": by_family[6]}
    except AllowlistError as exc:
        print(f"docker-allowlist: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
