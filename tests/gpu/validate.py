"""The validation run on a real GPU, in one command (docs/validation.md).

On the lent GPU machine, from the repository root, with the built wheels in .whl/:

    PYTHONUNBUFFERED=1 python3 -m tests.gpu.validate --out "$OUT"

Here, against the fake NVML backend and stand-ins for nvidia-smi and the load:

    python -m tests.gpu.validate --dry-run --out /tmp/validate-out

Steps, each with its own time limit inside one overall deadline: install (the
wheels into a private folder) and its check; ``ai-bottleneck probes``; every
NVML value of the GPU probe beside nvidia-smi's (idle, then once inside each
phase); the load phases (tests/gpu/phases.py), each recorded by ``diagnose
--record``; the agent's CPU cost against ``nvidia-smi -l 1``. After every step
the outputs are packed again, so a run stopped at any point still leaves
summary.json, summary.md, nvml_vs_smi.csv, run.log and validation.tar.gz (the
raw files and recordings) in --out. The card's settings are never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.gpu import overhead, summary
from tests.gpu.phases import PHASES
from tests.gpu.worker_client import Worker

REPO = Path(__file__).resolve().parents[2]
STEPS = ("install", "probes", "compare", "phases", "overhead")
MARK = ".ai-bottleneck-validate"  # a --work folder this run may empty


class Deadline(Exception):
    """The run's overall time is spent; the remaining steps are skipped."""


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = bool(args.dry_run)
        self.out = Path(args.out).resolve()
        self.work = Path(args.work).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        if self.work.exists() and any(self.work.iterdir()) and not (self.work / MARK).exists():
            raise SystemExit(f"--work {self.work}: not empty and not an earlier run's folder; "
                             "name a new one")
        shutil.rmtree(self.work, ignore_errors=True)
        (self.work / "rec").mkdir(parents=True)
        (self.work / MARK).touch()
        self.started = time.time()
        self.deadline = time.monotonic() + args.deadline_seconds
        self.log_file = open(self.out / "run.log", "w", encoding="utf-8")  # noqa: SIM115
        self.python = sys.executable
        self.agent = [self.python, "-m", "ai_bottleneck.cli"]
        self.env = self._env([])
        self.result: dict[str, Any] = {
            "mode": "dry-run" if self.dry else "device", "started": self.started,
            "argv": sys.argv[1:], "settings": {k: v for k, v in vars(args).items()},
            "steps": [], "phases": [], "compare": [], "pids": []}

    # -- plumbing -------------------------------------------------------------------------

    def log(self, text: str) -> None:
        line = f"[{time.time() - self.started:6.1f}s] {text}"
        print(line, flush=True)
        if not self.log_file.closed:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def _env(self, site: list[str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AI_BOTTLENECK_")}
        env["PYTHONPATH"] = os.pathsep.join([*site, str(REPO)])
        env["PYTHONUNBUFFERED"] = "1"
        if self.dry:
            env["AI_BOTTLENECK_NVML_BACKEND"] = "tests.fakes.fake_nvml:from_env"
            env["AI_BOTTLENECK_FAKE_NVML"] = str(self.work / "fake_nvml.json")
            env["AI_BOTTLENECK_STANDIN_SMI_CALLS"] = str(self.work / "nvidia_smi_calls.jsonl")
            env["PATH"] = f"{self.work / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def left(self, wanted: float) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining < 1:
            raise Deadline()
        return float(min(wanted, remaining))

    def command(self, name: str, argv: list[str], timeout: float, *,
                stdout: Path | None = None, json_out: bool = False) -> dict[str, Any]:
        """Run one program to its end or its time limit (its whole process group killed).

        ``json_out``: stdout is JSON, so stderr (log lines) goes to NAME.err, not into it.
        """
        limit = self.left(timeout)
        target = stdout or self.work / f"{name}.out"
        started = time.monotonic()
        with open(target, "w", encoding="utf-8") as fh, \
                open(self.work / f"{name}.err" if json_out else os.devnull, "w") as err:
            proc = subprocess.Popen(argv, stdout=fh, stderr=err if json_out else subprocess.STDOUT,
                                    cwd=REPO, env=self.env, start_new_session=True)
            self.result["pids"].append(proc.pid)
            try:
                rc: int | None = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                rc = None
                overhead.stop_group(proc, 15, 5)  # SIGTERM, then SIGKILL
        done = {"name": name, "rc": rc, "timed_out": rc is None,
                "seconds": round(time.monotonic() - started, 2), "output": target.name}
        self.log(f"{name}: rc={rc} in {done['seconds']}s" + (" (TIMED OUT)" if rc is None else ""))
        return done

    def step(self, name: str, record: dict[str, Any]) -> None:
        self.result["steps"].append(record)
        self.pack()

    def pack(self) -> None:
        self.result["seconds"] = round(time.time() - self.started, 1)
        try:
            summary.write(self.result, self.work, self.out)
        except Exception:  # a fault in the summary must not cost the run: the raw files stay
            self.log("writing the outputs failed:\n" + traceback.format_exc())

    # -- steps ----------------------------------------------------------------------------

    def prepare_dry_run(self) -> None:
        from tests.fakes.nvml_state import make_gpus, write_state

        gpu = make_gpus(1, name="Fake NVIDIA H200 (dry run)", memory_total_bytes=143771 * 2**20,
                        memory_used_bytes=0, power_milliwatts=90_000)
        write_state(self.work / "fake_nvml.json", gpu)
        bin_dir = self.work / "bin"
        bin_dir.mkdir()
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\ncd {REPO} && exec {self.python} -m tests.gpu.standin_smi "
                       '"$@"\n', encoding="utf-8")
        smi.chmod(0o755)

    def install(self) -> None:
        wheels = sorted(Path(self.args.wheels).glob("*.whl")) if self.args.wheels else []
        record: dict[str, Any] = {"name": "install", "wheels": [w.name for w in wheels]}
        if wheels:
            site = self.work / "site"
            done = self.command("pip_install", [
                self.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site),
                *map(str, wheels)], 120)
            record.update(done, name="install")
            self.env = self._env([str(site)])
        else:
            record.update(rc=0, note="using the current environment's ai-bottleneck")
        check = self.command("install_check", [self.python, "-m", "tests.gpu.install_check"], 60,
                             json_out=True)
        record["check"] = check
        try:
            record["found"] = json.loads((self.work / check["output"]).read_text())
        except ValueError:
            record["found"] = None
        self.step("install", record)

    def probes(self) -> None:
        done = self.command("probes", [*self.agent, "probes"], 60)
        self.step("probes", done)

    def compare(self, context: str) -> dict[str, Any]:
        path = self.work / f"nvml_{context}.json"
        done = self.command(f"compare_{context}", [
            self.python, "-m", "tests.gpu.nvml_compare", "--context", context,
            "--out", str(path), "--settle-seconds", "0.3" if self.dry else "1.0"], 45)
        done["file"] = path.name if path.exists() else None
        self.result["compare"].append(done)
        return done

    def start_worker(self, module: str) -> Worker:
        worker = Worker(self.python, module, self.work, self.work / "worker.log", self.env,
                        REPO, self.log)
        self.result["pids"].append(worker.proc.pid)
        return worker

    def phases(self) -> None:
        config = self.work / "agent.toml"
        config.write_text(
            f"[agent]\ninterval_seconds = {self.args.interval_seconds}\n"
            f"[probes.oom]\nfiles = [{json.dumps(str(self.work / 'worker.log'))}]\n"
            "interval_seconds = 1.0\n", encoding="utf-8")
        (self.work / "worker.log").touch()
        worker = self.start_worker("standin_load" if self.dry else "torch_load")
        try:
            hello = worker.wait(("hello", "failed"), self.left(self.args.worker_start_seconds))
            self.result["worker"] = hello
            if hello is None or hello[0] != "hello":
                self.step("worker", {"name": "worker", "rc": None, "error": str(hello)})
                return
            self.log(f"worker: {hello[1]}")
            for phase in [p for p in PHASES if p.name in self.args.phases.split(",")]:
                if worker.proc.poll() is not None:
                    worker = self.start_worker(worker.module)
                    worker.wait(("hello", "failed"), self.left(self.args.worker_start_seconds))
                record: dict[str, Any] = {"name": phase.name}
                self.result["phases"].append(record)  # kept, also if the deadline cuts it
                self.phase(record, worker, config)
                self.pack()
        finally:
            worker.close()
        self.step("phases", {"name": "phases", "rc": 0})

    def phase(self, record: dict[str, Any], worker: Worker, config: Path) -> None:
        name = record["name"]
        worker.send(f"phase {name}")
        ready = worker.wait(("ready", "failed"), self.left(90))
        record["ready"] = ready[1] if ready else {"error": "no answer in time"}
        if ready is None or ready[0] != "ready":
            self.log(f"phase {name}: not ready: {ready}")
            worker.kill_if_silent(ready)
            return
        seconds = self.args.phase_seconds
        rec = self.work / "rec" / f"{name}.jsonl.gz"
        diagnose_out = self.work / f"diagnose_{name}.json"
        record["diagnose"] = self.command(f"diagnose_{name}", [
            *self.agent, "diagnose", "--duration", f"{seconds}s", "--window",
            f"{self.args.window_seconds}s", "--config", str(config), "--json",
            "--record", str(rec)], seconds + 40, stdout=diagnose_out, json_out=True)
        # Under the same load, once the recording is done: a second NVML client and
        # nvidia-smi's GPM sampling cannot disturb what the agent recorded.
        record["compare"] = self.compare(name).get("file")
        worker.send("stop")
        stopped = worker.wait(("stopped", "failed"), self.left(60))
        record["stopped"] = stopped[1] if stopped else {"error": "no answer in time"}
        worker.kill_if_silent(stopped)
        record["recording"] = rec.name if rec.exists() else None

    def measure_overhead(self) -> None:
        config = self.work / "overhead.toml"
        config.write_text("[agent]\ninterval_seconds = 1.0\n", encoding="utf-8")
        seconds = self.args.overhead_seconds
        lead_in = 1.5 if self.dry else 3.0  # imports and NVML start, left out of both
        self.left(seconds + lead_in + 30)
        self.log(f"overhead: {seconds:g}s at 1 Hz against nvidia-smi -l 1")
        try:
            figures = overhead.measure(
                [*self.agent, "diagnose", "--duration", f"{seconds + lead_in + 15:g}s",
                 "--window", "10s", "--config", str(config), "--json"],
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv",
                 "-l", "1"], seconds=seconds, lead_in=lead_in, env=self.env, cwd=REPO,
                agent_out=self.work / "overhead_agent.json",
                agent_err=self.work / "overhead_agent.err",
                smi_out=self.work / "overhead_nvidia_smi.csv")
        except (OSError, subprocess.SubprocessError) as exc:
            figures = {"error": f"{type(exc).__name__}: {exc}"}
        self.result["overhead"] = figures
        self.result["pids"] += figures.get("pids", [])
        self.log(f"overhead: {json.dumps({k: figures.get(k) for k in ('agent', 'nvidia_smi')})}")
        self.step("overhead", {"name": "overhead", "rc": 0 if "error" not in figures else 1})

    def guarded(self, name: str, action: Callable[[], None]) -> None:
        """One step; a fault in this script's own code fails the step, not the run."""
        try:
            action()
        except Deadline:
            raise
        except Exception as exc:
            self.log(f"step {name} failed in the validation script:\n" + traceback.format_exc())
            self.step(name, {"name": name, "rc": None, "error": f"{type(exc).__name__}: {exc}"})

    def run(self) -> int:
        steps = [s.strip() for s in self.args.steps.split(",") if s.strip()]
        unknown = sorted(set(steps) - set(STEPS)) + sorted(
            set(self.args.phases.split(",")) - {p.name for p in PHASES})
        if unknown:
            self.log(f"unknown step or phase {unknown[0]!r}: the steps are "
                     f"{', '.join(STEPS)}; the phases {', '.join(p.name for p in PHASES)}")
            return 2
        self.log(f"validation run ({self.result['mode']}): steps {', '.join(steps)}; "
                 f"work {self.work}; out {self.out}")
        try:
            if self.dry:
                self.prepare_dry_run()
            self.guarded("install", self.install)  # every other step needs the agent
            actions = {"probes": self.probes, "compare": lambda: self.step(
                "compare_idle", self.compare("idle")), "phases": self.phases,
                "overhead": self.measure_overhead}
            for name in steps:
                if name in actions:  # "install" has run already
                    self.guarded(name, actions[name])
        except Deadline:
            self.log("the run's deadline has passed: the remaining steps are skipped")
            self.result["deadline_hit"] = True
        finally:
            self.result["finished"] = time.time()
            self.pack()
            self.log(f"done in {time.time() - self.started:.0f}s; outputs in {self.out}")
            with contextlib.suppress(OSError):  # the device tool's reply shows stdout's end
                print((self.out / "summary.md").read_text(encoding="utf-8"), flush=True)
            self.log_file.close()
        try:
            return 0 if summary.load(self.out)["ok"] else 1
        except (OSError, ValueError, KeyError):
            return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT"),
                        help="where the outputs go (default: $OUT)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a fresh one "
                        "under /tmp)")
    parser.add_argument("--dry-run", action="store_true",
                        help="fake NVML, stand-in nvidia-smi and load, short phases")
    parser.add_argument("--wheels", default=None,
                        help="folder of wheels to install (ai-bottleneck and what the "
                             "machine lacks; default .whl on a device, none in a dry run)")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"which steps, comma-separated (of {', '.join(STEPS)})")
    parser.add_argument("--phases", default=",".join(p.name for p in PHASES),
                        help="which load phases, comma-separated (a second try of one)")
    parser.add_argument("--phase-seconds", type=float, default=None)
    parser.add_argument("--window-seconds", type=float, default=None)
    parser.add_argument("--interval-seconds", type=float, default=None)
    parser.add_argument("--overhead-seconds", type=float, default=None)
    parser.add_argument("--worker-start-seconds", type=float, default=120.0)
    parser.add_argument("--deadline-seconds", type=float, default=None)
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("--out is required where $OUT is not set")
    defaults = ({"phase_seconds": 3.0, "window_seconds": 1.5, "interval_seconds": 0.5,
                 "overhead_seconds": 4.0, "deadline_seconds": 150.0} if args.dry_run else
                {"phase_seconds": 30.0, "window_seconds": 5.0, "interval_seconds": 1.0,
                 "overhead_seconds": 60.0, "deadline_seconds": 420.0})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.wheels is None and not args.dry_run:
        args.wheels = str(REPO / ".whl")
    if args.work is None:
        args.work = f"/tmp/ai-bottleneck-validate-{os.getpid()}"
    return Run(args).run()


if __name__ == "__main__":
    sys.exit(main())
