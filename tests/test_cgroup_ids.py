"""The /proc/PID/cgroup parser over the path shapes real hosts write."""

from __future__ import annotations

import os

import pytest

from ai_bottleneck.probes.cgroup_ids import Workload, parse_cgroup

CID = "3f4e2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"
UID = "8e0b5c2a-6f4d-4b1e-9a7c-2d3e4f5a6b7c"
UID_ = UID.replace("-", "_")

SHAPES = [
    ("docker, systemd driver, cgroup v2",
     f"0::/system.slice/docker-{CID}.scope\n",
     Workload(CID, "docker")),
    ("docker, cgroupfs driver, cgroup v1",
     f"12:pids:/docker/{CID}\n11:memory:/docker/{CID}\n1:name=systemd:/docker/{CID}\n",
     Workload(CID, "docker")),
    ("containerd on Kubernetes, systemd driver (burstable)",
     f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
     f"cri-containerd-{CID}.scope\n",
     Workload(CID, "containerd", UID)),
    ("containerd on Kubernetes, guaranteed pod (no QoS level)",
     f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
     Workload(CID, "containerd", UID)),
    ("CRI-O on Kubernetes, systemd driver (besteffort)",
     f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"crio-{CID}.scope\n",
     Workload(CID, "cri-o", UID)),
    ("CRI-O's conmon is not the container",
     f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"crio-conmon-{CID}.scope\n",
     Workload("", "", UID)),
    ("Kubernetes, cgroupfs driver, cgroup v1",
     f"13:memory:/kubepods/burstable/pod{UID}/{CID}\n"
     f"1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n",
     Workload(CID, "", UID)),
    ("CRI-O, cgroupfs driver",
     f"0::/kubepods/besteffort/pod{UID}/crio-{CID}\n",
     Workload(CID, "cri-o", UID)),
    ("seen from another pod's cgroup namespace",
     f"0::/../../kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
     Workload(CID, "containerd", UID)),
    ("containerd without Kubernetes (namespace default)",
     f"0::/default/{CID}\n",
     Workload(CID, "")),
    ("podman, rootless",
     f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope\n",
     Workload(CID, "podman")),
    ("a systemd service",
     "0::/system.slice/vllm-server.service\n",
     Workload(unit="vllm-server.service")),
    ("cgroup v1 and v2 mixed (hybrid): the unified line is read first",
     f"12:memory:/system.slice/docker-{CID}.scope\n0::/system.slice/docker-{CID}.scope\n",
     Workload(CID, "docker")),
    ("a login session: nothing to say",
     "0::/user.slice/user-1000.slice/session-4.scope\n",
     Workload()),
    ("inside a private cgroup namespace: the root",
     "0::/\n",
     Workload()),
    ("empty or garbage", "not a cgroup file\n\n", Workload()),
]


@pytest.mark.parametrize("text, expected", [(t, e) for _, t, e in SHAPES],
                         ids=[name for name, _, _ in SHAPES])
def test_real_path_shapes(text: str, expected: Workload) -> None:
    assert parse_cgroup(text) == expected


def test_this_process_cgroup_file_parses_without_error() -> None:
    with open(f"/proc/{os.getpid()}/cgroup", encoding="utf-8") as fh:
        found = parse_cgroup(fh.read())
    assert isinstance(found, Workload)  # whatever this host runs us in, no exception
