"""The agent's own CPU cost at 1 Hz against nvidia-smi's ``-l 1`` loop over the same seconds.

Both programs start together; after a lead-in (imports, NVML start) each one's
CPU seconds are read from /proc/PID/stat (utime + stime, and the children it
waited for) at the start and at the end of the measured span, so start-up is
left out of both. Figures, not assertions: the validation summary reports them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> dict[str, float] | None:
    """CPU seconds of a live process from /proc (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    utime, stime, cutime, cstime = (int(x) / TICKS for x in fields[11:15])
    return {"user": utime, "system": stime, "children": cutime + cstime,
            "total": utime + stime + cutime + cstime}


def peak_rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def stop_group(proc: subprocess.Popen[Any], sig: int, wait: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=wait)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def measure(agent: Sequence[str], smi: Sequence[str], *, seconds: float, lead_in: float,
            env: Mapping[str, str], cwd: Path, agent_out: Path, smi_out: Path,
            agent_err: Path) -> dict[str, Any]:
    """Run both, measure ``seconds`` after ``lead_in``, stop both; the figures."""
    with open(agent_out, "w") as a_out, open(agent_err, "w") as a_err, \
            open(smi_out, "w") as s_out:
        agent_proc = subprocess.Popen(agent, stdout=a_out, stderr=a_err, env=dict(env),
                                      cwd=cwd, start_new_session=True)
        smi_proc = subprocess.Popen(smi, stdout=s_out, stderr=subprocess.STDOUT, env=dict(env),
                                    cwd=cwd, start_new_session=True)
        try:
            time.sleep(lead_in)
            start = time.monotonic()
            before = {"agent": cpu_seconds(agent_proc.pid), "nvidia_smi": cpu_seconds(smi_proc.pid)}
            time.sleep(seconds)
            after = {"agent": cpu_seconds(agent_proc.pid), "nvidia_smi": cpu_seconds(smi_proc.pid)}
            span = time.monotonic() - start
            rss = peak_rss_bytes(agent_proc.pid)
        finally:
            stop_group(smi_proc, signal.SIGTERM, 5)
            stop_group(agent_proc, signal.SIGINT, 20)  # diagnose prints what it has on Ctrl-C
    result: dict[str, Any] = {"seconds": span, "lead_in_seconds": lead_in,
                              "agent_command": list(agent), "nvidia_smi_command": list(smi),
                              "agent_peak_rss_bytes": rss,
                              "pids": [agent_proc.pid, smi_proc.pid],
                              "agent_exit": agent_proc.returncode,
                              "nvidia_smi_exit": smi_proc.returncode}
    for who in ("agent", "nvidia_smi"):
        b, a = before[who], after[who]
        if b is None or a is None:
            result[who] = {"error": "the process ended before the span was over"}
            continue
        result[who] = {key: a[key] - b[key] for key in a}
        result[who]["per_second"] = result[who]["total"] / span
    smi_lines = [ln for ln in smi_out.read_text().splitlines() if ln and ln[0].isdigit()]
    result["nvidia_smi_rows"] = len(smi_lines)
    agent_total = result["agent"].get("total")
    smi_total = result["nvidia_smi"].get("total")
    result["ratio_agent_to_nvidia_smi"] = (
        agent_total / smi_total if agent_total is not None and smi_total else None)
    return result
