"""What a real node could leave behind on the machine, as comparable snapshots."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
)
"""Global ones kubelet writes, and the host namespace's that kube-proxy or CNI would."""
PATHS = (
    "/run/containerd",
    "/var/run/nri",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/lib/kube-router",
    "/var/log/containers",
    "/var/log/pods",
    "/etc/cni",
    "/opt/cni",
    "/opt/containerd",
    "/etc/kubernetes",
)
"""Default locations of node state; none may appear on the host."""
IPTABLES = ("iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save")


@dataclass(frozen=True)
class Snapshot:
    mounts: frozenset[str]
    netns: frozenset[str]
    cgroups: frozenset[str]
    firewall: tuple[tuple[str, str], ...]
    ipsets: str
    links: frozenset[str]
    sysctls: tuple[tuple[str, str], ...]
    paths: frozenset[str]

    def diff(self, after: Snapshot) -> dict[str, object]:
        """Everything that differs, by kind (empty: the machine is as it was)."""
        out: dict[str, object] = {}
        for name in ("mounts", "netns", "cgroups", "links", "paths"):
            old, new = getattr(self, name), getattr(after, name)
            if old != new:
                out[name] = {"added": sorted(new - old), "removed": sorted(old - new)}
        for name in ("firewall", "ipsets", "sysctls"):
            if getattr(self, name) != getattr(after, name):
                out[name] = {"before": getattr(self, name), "after": getattr(after, name)}
        return out


def _run(*cmd: str) -> str:
    if not shutil.which(cmd[0]):
        return ""
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)
    return res.stdout if res.returncode == 0 else f"(exit {res.returncode})"


def _firewall(tool: str) -> str:
    """Rules without comments and counters (which change with traffic)."""
    lines = [re.sub(r"\[\d+:\d+\]", "", line) for line in _run(tool).splitlines() if not line.startswith("#")]
    return "\n".join(lines)


def _mounts() -> frozenset[str]:
    out = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        out.add(f"{fields[4]} {fields[sep + 1]} {fields[sep + 2]}")
    return frozenset(out)


def _sandbox_cgroup(path: Path) -> bool:
    """Cgroups this machine's own process supervisor creates and removes for every command it
    runs (``process_api``): they come and go with the commands around the test, never with ours."""
    return "process_api" in path.parts


def snapshot() -> Snapshot:
    netns_dir = Path("/run/netns")
    sysctls = []
    for name in SYSCTLS:
        try:
            sysctls.append((name, Path("/proc/sys", name).read_text().strip()))
        except OSError:
            sysctls.append((name, "(absent)"))
    return Snapshot(
        mounts=_mounts(),
        netns=frozenset(p.name for p in netns_dir.iterdir()) if netns_dir.exists() else frozenset(),
        cgroups=frozenset(str(p) for p in Path("/sys/fs/cgroup").rglob("*") if p.is_dir() and not _sandbox_cgroup(p)),
        firewall=tuple((tool, _firewall(tool)) for tool in IPTABLES),
        ipsets=_run("ipset", "list", "-n"),
        links=frozenset(_run("ip", "-o", "link", "show").split("\n")) - {""},
        sysctls=tuple(sysctls),
        paths=frozenset(p for p in PATHS if os.path.lexists(p)),
    )


def processes_matching(netns_inode: int, mntns_inode: int, words: tuple[str, ...]) -> list[str]:
    """Live processes in either namespace, or whose command line or cgroups name any of
    ``words`` (the run directory, the namespace's name, container ids)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cgroups = (entry / "cgroup").read_text()
            inodes = {os.stat(entry / "ns" / "net").st_ino, os.stat(entry / "ns" / "mnt").st_ino}
        except (OSError, IndexError):
            continue
        if inodes & {netns_inode, mntns_inode} or any(w in cmdline or w in cgroups for w in words):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found
