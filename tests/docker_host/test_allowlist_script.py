"""docker_host's allow-list script (files/docker_allowlist.py) against a simulated filter table.

The fake below answers the commands the script uses (iptables -w -S/-N/-X/-F/-I/-D and
iptables-restore -w --noflush) the way iptables does, per family, and records them; the
Molecule scenario `default` runs the same script against the real iptables and ip6tables.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from collections.abc import Sequence
from types import ModuleType

import pytest
import yaml

from tests.conftest import REPO_ROOT, load_filter_plugin

ROLE = REPO_ROOT / "roles" / "docker_host"
SCRIPT = ROLE / "files" / "docker_allowlist.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_host_allowlist_script", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


allowlist = load_script()
filters = load_filter_plugin("docker_host", "docker_host")
CHAIN = allowlist.CHAIN
BUILTIN = ("INPUT", "FORWARD", "OUTPUT")


class FakeNetfilter:
    """The filter table of iptables and of ip6tables, in `iptables -S` form."""

    def __init__(self, missing: Sequence[str] = ()) -> None:
        self.tables: dict[str, dict[str, list[str]]] = {
            tool: {name: [] for name in BUILTIN} for tool in ("iptables", "ip6tables")
        }
        self.missing = set(missing)
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None = None):
        argv = list(argv)
        self.calls.append(argv)
        tool = argv[0].removesuffix("-restore")
        if tool in self.missing:
            raise FileNotFoundError(argv[0])
        assert argv[1] == "-w", argv  # always wait for the xtables lock
        table = self.tables[tool]
        try:
            if argv[0].endswith("-restore"):
                assert argv[2:] == ["--noflush"], argv
                self._restore(table, stdin or "")
                return self._done(argv)
            return self._done(argv, self._command(table, argv[2:]))
        except LookupError as exc:
            return subprocess.CompletedProcess(argv, 1, "", f"iptables: {exc}.\n")

    @staticmethod
    def _done(argv: list[str], stdout: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, stdout, "")

    def _command(self, table: dict[str, list[str]], args: list[str]) -> str:
        op, *rest = args
        if op == "-S":
            lines = [f"-P {name} ACCEPT" for name in BUILTIN]
            lines += [f"-N {name}" for name in table if name not in BUILTIN]
            lines += [rule for rules in table.values() for rule in rules]
            return "\n".join(lines) + "\n"
        chain = rest[0]
        if op == "-N":
            if chain in table:
                raise LookupError("Chain already exists")
            table[chain] = []
        elif op == "-X":
            if table.get(chain) or self._referenced(table, chain):
                raise LookupError("Directory not empty / chain is referenced")
            del table[chain]
        elif op == "-F":
            self._chain(table, chain).clear()
        elif op == "-I":
            _, position, jump, target = rest
            assert jump == "-j"
            self._chain(table, target)
            self._chain(table, chain).insert(int(position) - 1, f"-A {chain} -j {target}")
        elif op == "-D":
            del self._chain(table, chain)[int(rest[1]) - 1]
        else:
            raise AssertionError(f"unexpected command {args}")
        return ""

    def _restore(self, table: dict[str, list[str]], text: str) -> None:
        lines = text.splitlines()
        assert lines[0] == "*filter" and lines[-1] == "COMMIT", lines
        for line in lines[1:-1]:
            if line.startswith(":"):
                table.setdefault(line[1:].split()[0], [])
            elif line.startswith("-F "):
                self._chain(table, line.split()[1]).clear()
            elif line.startswith("-A "):
                self._chain(table, line.split()[1]).append(line)
            else:
                raise AssertionError(f"unexpected restore line {line!r}")

    @staticmethod
    def _chain(table: dict[str, list[str]], name: str) -> list[str]:
        if name not in table:
            raise LookupError("No chain/target/match by that name")
        return table[name]

    @staticmethod
    def _referenced(table: dict[str, list[str]], name: str) -> bool:
        return any(rule.endswith(f"-j {name}") for rules in table.values() for rule in rules)

    def docker_started(self) -> None:
        """What dockerd leaves in the filter table: its chains, DOCKER-USER with RETURN."""
        for table in self.tables.values():
            table.setdefault("DOCKER-USER", []).append("-A DOCKER-USER -j RETURN")
            table["FORWARD"][:0] = ["-A FORWARD -j DOCKER-USER"]
            table["FORWARD"].append("-A FORWARD -o docker0 -j DOCKER")
            table.setdefault("DOCKER", [])

    def leftovers(self, tool: str) -> list[str]:
        return [
            line for line in self._command(self.tables[tool], ["-S"]).splitlines() if CHAIN in line
        ]


@pytest.fixture(autouse=True)
def both_families(monkeypatch):
    """Both families are filtered whatever this machine's kernel offers."""
    monkeypatch.setattr(allowlist, "family_available", lambda family: True)


SOURCES = ["10.99.1.0/24", "10.99.3.7", "fd00:99:1::/64"]
RULES_V4 = [
    f"-A {CHAIN} -i docker0 -j RETURN",
    f"-A {CHAIN} -i br-+ -j RETURN",
    f"-A {CHAIN} -s 10.99.1.0/24 -j RETURN",
    f"-A {CHAIN} -s 10.99.3.7/32 -j RETURN",
    f"-A {CHAIN} -m conntrack --ctstate DNAT --ctdir ORIGINAL -j DROP",
]
RULES_V6 = [
    f"-A {CHAIN} -i docker0 -j RETURN",
    f"-A {CHAIN} -i br-+ -j RETURN",
    f"-A {CHAIN} -s fd00:99:1::/64 -j RETURN",
    f"-A {CHAIN} -m conntrack --ctstate DNAT --ctdir ORIGINAL -j DROP",
]


def test_sources_are_split_by_family_canonical_and_deduplicated():
    by_family = allowlist.parse_sources(
        ["10.99.1.0/24", "10.99.3.7", "fd00:99:1:0::/64", "10.99.3.7/32", "2001:DB8::1"]
    )
    assert by_family == {
        4: ["10.99.1.0/24", "10.99.3.7/32"],
        6: ["fd00:99:1::/64", "2001:db8::1/128"],
    }


def test_rules_return_containers_and_allowed_sources_and_drop_only_dnat():
    assert allowlist.chain_rules(["10.99.1.0/24", "10.99.3.7/32"]) == RULES_V4
    # No allowed network of a family: all of its DNAT'd traffic is dropped.
    assert allowlist.chain_rules([]) == [*RULES_V4[:2], RULES_V4[-1]]


def test_restore_input_replaces_the_chain_in_one_transaction():
    text = allowlist.restore_input(["fd00:99:1::/64"])
    assert text.splitlines() == ["*filter", f":{CHAIN} - [0:0]", f"-F {CHAIN}", *RULES_V6, "COMMIT"]
    assert text.endswith("COMMIT\n")


def test_apply_on_a_fresh_boot_builds_everything_before_docker_starts():
    fake = FakeNetfilter()
    assert allowlist.apply(allowlist.parse_sources(SOURCES), fake) is True
    for tool, rules in (("iptables", RULES_V4), ("ip6tables", RULES_V6)):
        table = fake.tables[tool]
        assert table[CHAIN] == rules
        assert table["DOCKER-USER"] == [f"-A DOCKER-USER -j {CHAIN}"]
        assert table["FORWARD"] == ["-A FORWARD -j DOCKER-USER"]
    # dockerd then adds its RETURN below the jump and keeps its own FORWARD jump.
    fake.docker_started()
    assert fake.tables["iptables"]["DOCKER-USER"][0] == f"-A DOCKER-USER -j {CHAIN}"


def test_apply_next_to_a_running_docker_puts_the_jump_first_and_is_idempotent():
    fake = FakeNetfilter()
    fake.docker_started()
    by_family = allowlist.parse_sources(SOURCES)
    assert allowlist.apply(by_family, fake) is True
    for tool in ("iptables", "ip6tables"):
        assert fake.tables[tool]["DOCKER-USER"] == [
            f"-A DOCKER-USER -j {CHAIN}",
            "-A DOCKER-USER -j RETURN",
        ]
        assert fake.tables[tool]["FORWARD"].count("-A FORWARD -j DOCKER-USER") == 1
    fake.calls.clear()
    assert allowlist.apply(by_family, fake) is False
    # The second run only rewrote the chain with the same rules (one transaction per family).
    changing = [call for call in fake.calls if "-S" not in call]
    assert changing == [
        ["iptables-restore", "-w", "--noflush"],
        ["ip6tables-restore", "-w", "--noflush"],
    ]


def test_apply_moves_a_misplaced_jump_to_the_top_and_drops_duplicates():
    fake = FakeNetfilter()
    fake.docker_started()
    allowlist.apply(allowlist.parse_sources(SOURCES), fake)
    user = fake.tables["iptables"]["DOCKER-USER"]
    jump = f"-A DOCKER-USER -j {CHAIN}"
    user[:] = ["-A DOCKER-USER -j RETURN", jump, jump]
    assert allowlist.apply(allowlist.parse_sources(SOURCES), fake) is True
    assert user == [jump, "-A DOCKER-USER -j RETURN"]


def test_a_changed_list_changes_the_rules():
    fake = FakeNetfilter()
    fake.docker_started()
    allowlist.apply(allowlist.parse_sources(SOURCES), fake)
    assert allowlist.apply(allowlist.parse_sources(["192.0.2.0/24"]), fake) is True
    assert fake.tables["iptables"][CHAIN][2:] == [
        f"-A {CHAIN} -s 192.0.2.0/24 -j RETURN",
        RULES_V4[-1],
    ]
    # IPv6 has no allowed network left: every DNAT'd IPv6 connection is dropped.
    assert fake.tables["ip6tables"][CHAIN] == [*RULES_V6[:2], RULES_V6[-1]]


def test_remove_leaves_no_trace_and_keeps_dockers_chains():
    fake = FakeNetfilter()
    fake.docker_started()
    allowlist.apply(allowlist.parse_sources(SOURCES), fake)
    assert allowlist.remove(fake) is True
    for tool in ("iptables", "ip6tables"):
        assert fake.leftovers(tool) == []
        assert fake.tables[tool]["DOCKER-USER"] == ["-A DOCKER-USER -j RETURN"]
        assert "-A FORWARD -j DOCKER-USER" in fake.tables[tool]["FORWARD"]
    assert allowlist.remove(fake) is False


def test_an_empty_list_in_the_config_allows_everyone():
    fake = FakeNetfilter()
    fake.docker_started()
    allowlist.apply(allowlist.parse_sources(SOURCES), fake)
    assert allowlist.apply(allowlist.parse_sources([]), fake) is True
    assert fake.leftovers("iptables") == [] and fake.leftovers("ip6tables") == []


def test_missing_ip6tables_fails_apply_but_not_remove():
    fake = FakeNetfilter(missing=["ip6tables"])
    with pytest.raises(allowlist.AllowlistError, match="ip6tables is missing"):
        allowlist.apply(allowlist.parse_sources(SOURCES), fake)
    assert allowlist.remove(fake) is True  # the IPv4 chain built before the failure
    assert fake.leftovers("iptables") == []


def test_a_failing_command_is_an_error_naming_it():
    def refuse(argv, stdin=None):
        return subprocess.CompletedProcess(argv, 4, "", "iptables: Permission denied.\n")

    with pytest.raises(allowlist.AllowlistError, match=r"`iptables -w -S` failed: .*Permission"):
        allowlist.apply(allowlist.parse_sources(SOURCES), refuse)


def test_config_errors_name_the_file_and_the_entries(tmp_path):
    config = tmp_path / "allowlist.json"
    config.write_text(json.dumps({"sources": ["10.99.1.0/24", "10.99.1.5/24", "example.org"]}))
    with pytest.raises(allowlist.AllowlistError) as info:
        allowlist.load_config(str(config))
    assert "'10.99.1.5/24' (host bits set: the network is 10.99.1.0/24)" in str(info.value)
    assert "'example.org' (not an IPv4/IPv6 address or CIDR network)" in str(info.value)
    assert "'10.99.1.0/24'" not in str(info.value)
    config.write_text("[]")
    with pytest.raises(allowlist.AllowlistError, match="'sources' list"):
        allowlist.load_config(str(config))
    with pytest.raises(allowlist.AllowlistError, match="cannot read"):
        allowlist.load_config(str(tmp_path / "missing.json"))


def test_rules_action_prints_both_families_without_touching_anything(tmp_path, capsys):
    config = tmp_path / "allowlist.json"
    config.write_text(json.dumps({"managed_by": "test", "sources": SOURCES}))
    assert allowlist.main(["rules", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# iptables\n*filter\n")
    assert f"-A {CHAIN} -s fd00:99:1::/64 -j RETURN" in out.split("# ip6tables")[1]


def test_main_reports_a_bad_config_on_stderr(tmp_path, capsys):
    config = tmp_path / "allowlist.json"
    config.write_text(json.dumps({"sources": ["10.0.0.300"]}))
    assert allowlist.main(["apply", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("docker-allowlist: not IPv4/IPv6 addresses or networks: '10.0.0.300'")


@pytest.mark.parametrize(
    ("entry", "valid"),
    [
        ("10.99.1.0/24", True),
        ("203.0.113.7", True),
        ("0.0.0.0/0", True),
        ("2001:db8::/48", True),
        ("2001:db8::1", True),
        ("::/0", True),
        ("10.99.1.5/24", False),
        ("10.0.0.300", False),
        ("1.2.3.4/33", False),
        ("example.org", False),
        ("fe80::1%eth0", False),
        (" 10.0.0.1", False),
        ("", False),
        (10, False),
    ],
)
def test_the_role_and_the_host_script_agree_on_valid_entries(entry, valid):
    assert (filters.docker_host_invalid_networks([entry]) == []) is valid
    if valid:
        allowlist.parse_network(entry)
    else:
        with pytest.raises(ValueError):
            allowlist.parse_network(entry)


def test_the_role_names_the_chain_the_script_keeps():
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    assert role_vars["__docker_host_allowlist_chain"] == CHAIN
    unit = (ROLE / "templates" / "docker-allowlist.service.j2").read_text()
    assert "__docker_host_allowlist_chain" in unit
