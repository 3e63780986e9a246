"""A single-node SLURM cluster on localhost, for testing the SLURM profile against a real scheduler.

Debian's `slurm-wlm` and `munge` packages provide the daemons; they are started by hand (no systemd)
with every file they write (configuration, key, sockets, state, logs) under one folder, on free
ports, and stopped by the PIDs they were started with. There is no accounting database (slurmdbd),
so `sacct` does not work and job status must come from `squeue` / `scontrol`; MinJobAge keeps
finished jobs visible there for an hour. The daemons die with the process that started them
(Linux's parent-death signal), so a test run killed or interrupted mid-way leaves none behind. The node has one fake GPU (a gres bound to
/dev/null), so rules that ask for `gpu: 1` run, with CUDA_VISIBLE_DEVICES set, on a CPU-only
machine.

By hand (as root):  python tests/slurm_cluster.py /tmp/slurm   # prints the SLURM_CONF to export;
Ctrl-C stops the daemons.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "munge"]
DAEMONS = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel"]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """SIGTERM to this process when the process that started it dies, however it dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None)


def unavailable_reason() -> str | None:
    """Why a local SLURM cannot be brought up here (None when it can, installing it if need be)."""
    if not sys.platform.startswith("linux"):
        return f"a local SLURM needs Linux, this is {sys.platform}"
    if all(_which(d) for d in DAEMONS):
        return None if os.geteuid() == 0 else "the SLURM daemons are installed but starting them needs root"
    if os.geteuid() != 0:
        return "SLURM is not installed and installing it (apt-get install slurm-wlm munge) needs root"
    if not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it with"
    return None


class InstallError(RuntimeError):
    """apt-get could not install SLURM (no package index, a held dpkg lock, a time-out...)."""


def install(log: Path, timeout: float = 600) -> None:
    """Install SLURM and munge from the distribution's packages, when missing."""
    if all(_which(d) for d in DAEMONS):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", *PACKAGES]

    def apt(args: list[str]) -> bool:
        with open(log, "a") as out:
            try:
                return subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                      timeout=timeout).returncode == 0
            except subprocess.TimeoutExpired:
                out.write(f"\n{' '.join(args)}: no answer in {timeout:.0f} s\n")
                return False

    # the package lists may be missing on a fresh machine: update once, then try again
    if not apt(cmd) and not (apt(["apt-get", "update", "-q"]) and apt(cmd)):
        raise InstallError(f"apt-get install {' '.join(PACKAGES)} failed: {log.read_text()[-800:]}")
    missing = [d for d in DAEMONS if not _which(d)]
    if missing:
        raise InstallError(f"apt-get installed {PACKAGES} but {missing} are still missing; see {log}")


def _free_ports(n: int) -> list[int]:
    """n distinct ports free now (held together while chosen, so they differ)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class LocalSlurm:
    """munged + slurmctld + slurmd for one node called `localhost`, all state under `root`."""

    def __init__(self, root: Path, cpus: int | None = None, gpus: int = 1):
        self.root = Path(root).resolve()
        # at least 2, so that a 2-thread job fits on a 1-CPU machine (the node line is trusted)
        self.cpus = cpus or max(2, len(os.sched_getaffinity(0)))
        self.gpus = gpus
        self.memory_mb = int(0.8 * _memory_mb())
        self.conf = self.root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """The environment in which sbatch, squeue, ... and snakemake talk to this cluster.

        Inside a job, snakemake's jobstep executor drops every SLURM_* variable (SLURM_CONF too)
        before it calls srun, which then looks for /etc/slurm/slurm.conf, where a real cluster
        keeps it. Rather than write there, PATH starts with an `srun` that restores SLURM_CONF."""
        return {**os.environ, "SLURM_CONF": str(self.conf),
                "PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}

    def _write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text("\n".join([
            "ClusterName=clumpfinder-test",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r / 'munge' / 'munge.socket'}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'slurmd.log'}",
            # no cgroups in a container: plain process tracking, no task binding
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            # finished jobs stay visible to squeue/scontrol for an hour (no accounting database)
            "MinJobAge=3600",
            "ReturnToService=2",
            # trust the node line below rather than the probed hardware
            "SlurmdParameters=config_overrides",
            "GresTypes=gpu",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb}{gres} State=UNKNOWN",
            f"PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP "
            f"DefMemPerCPU={self.memory_mb // self.cpus}",
            "",
        ]))
        (r / "bin").mkdir(exist_ok=True)
        srun = r / "bin" / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec {_which("srun")} "$@"\n')
        srun.chmod(0o755)
        (r / "gres.conf").write_text(f"NodeName=localhost Name=gpu File=/dev/null Count={self.gpus}\n"
                                     if self.gpus else "")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True, preexec_fn=_die_with_parent)
        log.close()
        time.sleep(0.2)
        if self.procs[name].poll() is not None:
            raise RuntimeError(f"{name} exited at start ({self.procs[name].returncode}): "
                               f"{(self.root / f'{name}.out').read_text()[-2000:]}")

    def start(self, timeout: float = 60) -> "LocalSlurm":
        self._write_config()
        atexit.register(self.stop)  # an interrupted run (Ctrl-C, pytest's own exit) stops them too
        m = self.root / "munge"
        key = m / "munge.key"
        if not key.exists():
            subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True,
                           capture_output=True)
        key.chmod(0o600)
        m.chmod(0o700)
        try:
            self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--socket={m / 'munge.socket'}",
                                   f"--key-file={key}", f"--pid-file={m / 'munged.pid'}",
                                   f"--seed-file={m / 'munged.seed'}", f"--log-file={m / 'munged.log'}"])
            self._wait(lambda: (m / "munge.socket").exists(), timeout, "munged's socket")
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-f", str(self.conf)])
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)])
            self._wait(self._node_idle, timeout, "the node to be idle in sinfo")
        except BaseException:
            self.stop()
            raise
        return self

    def _node_idle(self) -> bool:
        out = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                             env=self.env)
        return out.returncode == 0 and out.stdout.strip() == "idle"

    def _wait(self, ready, timeout: float, what: str) -> None:
        t_end = time.monotonic() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > t_end:
                logs = {n: (self.root / f"{n}.log").read_text()[-1500:] if (self.root / f"{n}.log").exists() else ""
                        for n in ("slurmctld", "slurmd")}
                raise RuntimeError(f"gave up waiting for {what} ({'exited: ' + ', '.join(dead) if dead else 'timeout'});"
                                   f" logs: {logs}")
            time.sleep(0.2)

    def run(self, *cmd: str) -> str:
        """A SLURM client command (squeue, scontrol, ...) against this cluster; its stdout."""
        return subprocess.run([_which(cmd[0]), *cmd[1:]], capture_output=True, text=True, env=self.env,
                              check=True).stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (finished jobs stay for MinJobAge seconds)."""
        fields = {}
        for token in self.run("scontrol", "show", "job", "--oneliner", str(job_id)).split():
            key, _, value = token.partition("=")
            fields[key] = value
        return fields

    def stop(self, timeout: float = 30) -> None:
        """Cancel what is left in the queue and wait for it to go, then stop the daemons this object
        started, by PID."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run([_which("scancel"), "--full", "--user", "root"], env=self.env, capture_output=True)
            t_end = time.monotonic() + timeout
            while time.monotonic() < t_end and subprocess.run(
                    [_which("squeue"), "-h", "-t", "PD,R,CG"], capture_output=True, text=True,
                    env=self.env).stdout.strip():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


if __name__ == "__main__":
    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "slurm-local")
    folder.mkdir(parents=True, exist_ok=True)
    install(folder / "apt.log")
    cluster = LocalSlurm(folder).start()
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
