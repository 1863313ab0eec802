"""The load phases of the validation run, and the label each should get.

The expected label is what the product's rules (docs/classifier.md) should say
about that load on a Hopper GPU with GPM; ``expected_label_coarse`` is what
they should say where the GPU gives only NVML's coarse utilization (GPM not
supported there, as in some virtual machines): then a stream of tiny kernels
reads as busy, and the evidence says the signal was coarse. A real recording
that replays to another label is a finding to look into, not a fixture to
relabel silently.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    name: str
    expected_label: str
    load: str
    why: str
    expected_label_coarse: str = ""

    def expected(self, gpm: bool) -> str:
        """The label expected with GPM read (``gpm``) or with the coarse signal only."""
        return self.expected_label if gpm else self.expected_label_coarse or self.expected_label


PHASES: tuple[Phase, ...] = (
    Phase("matmul", "gpu_bound",
          "8192x8192 bf16 matrix products back to back",
          "SM and tensor activity near their ceiling: rule 6, GPU busy by GPM"),
    Phase("copy", "gpu_bound",
          "device-to-device copies of a 2 GiB buffer back to back",
          "DRAM activity near its ceiling: rule 6 counts DRAM activity as busy"),
    Phase("tiny_kernels", "balanced",
          "a CUDA graph of 2000 one-block kernels on a 256-element tensor, replayed",
          "coarse utilization near 100% with SM activity of a few percent: not GPU "
          "busy by GPM, load present, nothing saturated (rule 12), with the small-kernel "
          "warning; without GPM the coarse signal reads busy (rule 6)",
          expected_label_coarse="gpu_bound"),
    Phase("memory_held", "idle",
          "93% of the card's memory allocated and held, no kernels",
          "high occupancy alone is a warning, not a bottleneck (servers pre-reserve "
          "memory): rule 13 with the memory warning"),
    Phase("oom", "vram_bound",
          "80% of memory held, then an allocation of 40% more every 2 s that fails "
          "with torch.OutOfMemoryError, each failure one line in the followed log",
          "an out-of-memory line is the hard signal: rule 1"),
)

BY_NAME = {p.name: p for p in PHASES}
