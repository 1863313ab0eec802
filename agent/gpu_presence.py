"""How many NVIDIA GPUs the PCI bus shows, independent of NVML.

The alert "NVML unusable on a node that should have a GPU" needs to know that
the node has one while NVML cannot say so (no driver library in the pod, the
container runtime did not inject the devices, a driver/library mismatch).
sysfs lists PCI devices whatever the driver does: a display or 3D controller
(class 0x0300xx or 0x0302xx) of vendor 0x10de is an NVIDIA GPU; NVSwitches
(class 0x0680) and the GPUs' audio functions (0x0403) are not counted.
"""

from __future__ import annotations

import os

NVIDIA_VENDOR = "0x10de"
GPU_CLASSES = ("0x0300", "0x0302")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip().lower()
    except (OSError, UnicodeDecodeError):
        return None


def count_nvidia_gpus(sys_root: str = "/sys") -> int | None:
    """NVIDIA GPUs on the PCI bus; None when the bus cannot be listed (no sysfs)."""
    folder = f"{sys_root}/bus/pci/devices"
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    count = 0
    for name in names:
        if _read(f"{folder}/{name}/vendor") != NVIDIA_VENDOR:
            continue
        cls = _read(f"{folder}/{name}/class") or ""
        if cls.startswith(GPU_CLASSES):
            count += 1
    return count
