"""GPUs on the PCI bus, counted from sysfs whatever NVML says."""

from __future__ import annotations

from pathlib import Path

from ai_bottleneck.exporter import build_registry
from ai_bottleneck.gpu_presence import count_nvidia_gpus
from ai_bottleneck.state import AgentState


def device(root: Path, address: str, vendor: str, cls: str) -> None:
    d = root / "bus" / "pci" / "devices" / address
    d.mkdir(parents=True)
    (d / "vendor").write_text(vendor + "\n")
    (d / "class").write_text(cls + "\n")


def test_counts_nvidia_display_and_3d_controllers_only(tmp_path: Path) -> None:
    device(tmp_path, "0000:17:00.0", "0x10de", "0x030200")  # H100: 3D controller
    device(tmp_path, "0000:18:00.0", "0x10de", "0x030000")  # a VGA-class NVIDIA GPU
    device(tmp_path, "0000:18:00.1", "0x10de", "0x040300")  # its audio function
    device(tmp_path, "0000:c0:00.0", "0x10de", "0x068000")  # NVSwitch
    device(tmp_path, "0000:03:00.0", "0x1002", "0x030000")  # another vendor's GPU
    device(tmp_path, "0000:00:1f.0", "0x8086", "0x060100")
    (tmp_path / "bus" / "pci" / "devices" / "0000:99:00.0").mkdir()  # unreadable: skipped
    assert count_nvidia_gpus(str(tmp_path)) == 2


def test_no_sysfs_is_unknown_not_zero(tmp_path: Path) -> None:
    assert count_nvidia_gpus(str(tmp_path / "nothing")) is None
    (tmp_path / "bus" / "pci" / "devices").mkdir(parents=True)
    assert count_nvidia_gpus(str(tmp_path)) == 0


def test_exported_only_once_known() -> None:
    state = AgentState()
    registry = build_registry(state, process_metrics=False)
    assert registry.get_sample_value("ai_bottleneck_gpu_pci_devices") is None
    state.set_gpu_pci_devices(8)
    assert registry.get_sample_value("ai_bottleneck_gpu_pci_devices") == 8
