"""A real one-node Slurm cluster for tests/test_slurm.py: munged, slurmctld and slurmd of our own.

Everything lives in one temporary folder: slurm.conf, gres.conf, a fresh MUNGE key, the MUNGE
socket, state, spool, logs, PID files. The daemons run in the foreground (`munged -F`,
`slurmctld -D`, `slurmd -D`), each in a session of its own, so stop() can end exactly what was
started here: the daemons by their PIDs, slurmctld's helper and the job step daemons
(`slurmstepd`, which detach from slurmd) by the sessions they live in. Nothing is read from or
written to /etc/slurm or /etc/munge; commands find this cluster through SLURM_CONF.

    with Cluster.started() as cluster:      # raises CannotRun (a reason to skip) where it cannot
        job = cluster.sbatch([...], env)
        wait_for(lambda: cluster.job(job)["JobState"] == "COMPLETED", 120, "job to complete")

Should the test process die without stopping the cluster (SIGKILL, a CI timeout), a watchdog process
ends the daemons' and the job steps' sessions and removes the folder.

Needs root (slurmd runs jobs as their owner; SlurmUser=root keeps it simple) and, when Slurm or
MUNGE is missing, apt-get: ensure_installed() installs Debian's slurm-wlm and munge (about 15 s),
with a policy-rc.d that keeps the packages from starting their own daemons.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, TypeVar

T = TypeVar("T")

PACKAGES = ("slurm-wlm", "munge")
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "scancel")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
CRED_EXPIRE_S = 10  # a requeued job may start again this long after it stopped (Slurm's default: 120 s)
# A fake GPU node, never started, in a partition of its own: `sbatch --test-only` weighs a GPU job's
# request against it. Sized like a common 8-GPU node; CLOUD: powered down, so never pinged.
GPU_PARTITION = "gpu"
GPU_NODE = "NodeName=gpunode1 NodeAddr=192.0.2.1 CPUs=64 RealMemory=512000 Gres=gpu:8 State=CLOUD"
LEAKY_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "PMI_", "PMIX_", "OMPI_", "MV2_", "HYDRA_", "I_MPI_")
WATCHDOG_MAX_S = 3600  # the watchdog ends the cluster after this long even while its test still runs


class CannotRun(Exception):
    """This machine cannot host the cluster; the message says why (a reason to skip, not a failure)."""


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path=os.pathsep.join(SBIN))


def missing_programs() -> list[str]:
    return [program for program in PROGRAMS if which(program) is None]


def _apt_get(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run([which("apt-get") or "apt-get", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def ensure_installed(timeout: float = 300) -> None:
    """Install slurm-wlm and munge with apt-get when a program is missing; CannotRun when that is impossible."""
    if os.name != "posix" or not Path("/proc/self/stat").exists():
        raise CannotRun("needs Linux (/proc) to run Slurm daemons")
    if os.geteuid() != 0:
        raise CannotRun("needs root: slurmd starts jobs as their owner and packages may need installing "
                        "(CI runs as root; run `sudo make test-slurm` here)")
    missing = missing_programs()
    if not missing:
        return
    if which("apt-get") is None:
        raise CannotRun(f"{', '.join(missing)} not installed and no apt-get to install {' '.join(PACKAGES)}")
    # Debian's maintainer scripts start munged/slurmd/slurmctld unless policy-rc.d forbids it (exit 101);
    # this test starts its own daemons and must leave none behind.
    own_policy = not POLICY_RC_D.exists()
    if own_policy:
        POLICY_RC_D.write_text("#!/bin/sh\n# written by odmar-mpi tests/slurm_cluster.py during apt-get install\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        install = ("install", "-y", "-q", "--no-install-recommends", *PACKAGES)
        result = _apt_get(*install, timeout=timeout)
        if result.returncode != 0:  # a clean machine may have no package lists yet
            update = _apt_get("update", "-q", timeout=timeout)
            result = _apt_get(*install, timeout=timeout) if update.returncode == 0 else update
    except subprocess.TimeoutExpired:
        raise CannotRun(f"apt-get did not install {' '.join(PACKAGES)} within {timeout:.0f} s") from None
    finally:
        if own_policy:
            POLICY_RC_D.unlink(missing_ok=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
        raise CannotRun(f"apt-get could not install {' '.join(PACKAGES)} (no package registry?):\n{tail}")
    if missing_programs():
        raise CannotRun(f"installed {' '.join(PACKAGES)} but {', '.join(missing_programs())} still missing")


def make_folder() -> Path:
    """A fresh private folder whose files may be executed (slurmd runs the job scripts from its spool)."""
    for parent in (None, "/var/tmp"):
        folder = Path(tempfile.mkdtemp(prefix="odmar-slurm-", dir=parent))
        probe = folder / "probe.sh"
        probe.write_text("#!/bin/sh\nexit 0\n")
        probe.chmod(0o755)
        try:
            if subprocess.run([str(probe)], timeout=10).returncode == 0:
                probe.unlink()
                return folder
        except OSError:
            pass
        shutil.rmtree(folder, ignore_errors=True)
    raise CannotRun(f"no temporary folder allows executing files ({tempfile.gettempdir()}, /var/tmp: noexec?)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sessions_of(pids: set[int]) -> dict[int, set[int]]:
    """Every live process, by session, for the sessions in `pids` (a session id is its leader's PID)."""
    found: dict[int, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        state, session = fields[0], int(fields[3])
        if session in pids and state != "Z":
            found.setdefault(session, set()).add(int(entry.name))
    return found


def describe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def listening_socket_inodes(folder: Path) -> set[str]:
    """Inodes of the UNIX sockets bound under `folder` (slurmstepd binds one per step in the spool dir)."""
    inodes = set()
    prefix = str(folder) + "/"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and parts[7].startswith(prefix):
                inodes.add(parts[6])
    return inodes


def pids_holding(inodes: set[str]) -> set[int]:
    holders = set()
    if not inodes:
        return holders
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        holders.add(int(entry.name))
                        break
    return holders


def session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[3])


WATCHDOG_OFF = "watchdog.off"


def end_sessions(daemon_pids: set[int], spool: Path) -> None:
    """SIGTERM the daemons, then SIGKILL everything in their sessions and in the job steps' sessions."""
    steps = {session_of(pid) for pid in pids_holding(listening_socket_inodes(spool))} - {None}
    for pid in daemon_pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    time.sleep(5)
    for pids in sessions_of(daemon_pids | steps).values():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def watchdog(parent: int, folder: Path, daemon_pids: set[int]) -> None:
    """Wait for stop() (the flag file) or the parent's death (or WATCHDOG_MAX_S); in the latter cases
    end the cluster."""
    deadline = time.monotonic() + WATCHDOG_MAX_S
    while not (folder / WATCHDOG_OFF).exists():
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    else:
        return
    end_sessions(daemon_pids, folder / "spool")
    if os.environ.get("ODMAR_SLURM_KEEP") != "1":
        shutil.rmtree(folder, ignore_errors=True)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2,
             on_timeout: Callable[[], str] | None = None) -> T:
    """Poll until predicate() is truthy and return it; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{extra}" if extra else ""))
        time.sleep(interval)


class Cluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.host = socket.gethostname().split(".")[0]
        self.conf = folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        # Nothing of a surrounding allocation or MPI launch may leak into our jobs.
        for name in list(self.env):
            if name.startswith(LEAKY_PREFIXES) and name != "SLURM_CONF":
                del self.env[name]
        self.daemons: dict[str, subprocess.Popen] = {}
        self.watchdog: subprocess.Popen | None = None
        self.step_sessions: set[int] = set()
        self.cpus = 0

    # ------------------------------------------------------------------ configuration

    def node_line(self) -> str:
        """This machine as slurmd sees it (`slurmd -C`): CPUs and memory; at least 2 CPUs for a 2-rank job."""
        found = subprocess.run([which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
        cpus = int(re.search(r"\bCPUs=(\d+)", found).group(1)) if re.search(r"\bCPUs=(\d+)", found) else os.cpu_count()
        memory = re.search(r"\bRealMemory=(\d+)", found)
        self.cpus = max(int(cpus or 1), 2)
        self.memory_mb = int(memory.group(1)) if memory else 1024
        return f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN"

    def write_config(self) -> None:
        f = self.folder
        for sub in ("state", "spool", "log"):
            (f / sub).mkdir(mode=0o700)
        key = f / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        (f / "plugstack.conf").write_text("")
        (f / "gres.conf").write_text("")  # the GPU node is never started: no devices to describe
        lines = [
            "ClusterName=odmartest",
            # Job ids that no earlier test cluster used: MPICH names its shared-memory segment after the PMI
            # job id ("<job>.<step>"); a segment left in /dev/shm by a killed rank of an earlier cluster's
            # job 1 would otherwise be found again by this cluster's job 1 and break its MPI_Init.
            f"FirstJobId={random.randint(100_000, 60_000_000)}",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: how long a requeued job waits before it may start again (default 120 s)
            f"AuthInfo=socket={f / 'munge.socket'},cred_expire={CRED_EXPIRE_S}",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool'}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'slurmd.pid'}",
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"PlugStackConfig={f / 'plugstack.conf'}",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobRequeue=1",
            "SchedulerType=sched/backfill",
            # A requeued job starts within seconds of cred_expire (by default the next pass may be a minute later).
            "SchedulerParameters=sched_interval=5,bf_interval=5",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SlurmdParameters=config_overrides",  # the node line below is the truth (e.g. CPUs raised to 2)
            "GresTypes=gpu",
            "MinJobAge=300",  # finished jobs stay visible to `scontrol show job` (no accounting here)
            "KillWait=5",
            # A job may overrun its limit by 2 minutes before it is killed: time for the ranks to stop on the
            # time-limit signal (due 120 s before the limit) and the script to requeue, however busy the machine.
            "OverTimeLimit=2",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "SuspendProgram=/bin/true",
            "ResumeProgram=/bin/true",
            self.node_line(),
            GPU_NODE,
            "PartitionName=debug Nodes=" + self.host + " Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName={GPU_PARTITION} Nodes=gpunode1 MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------ start and stop

    def _start(self, name: str, command: list[str]) -> None:
        log = open(self.folder / "log" / f"{name}.out", "wb")
        try:
            self.daemons[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                  env=self.env, cwd=self.folder, start_new_session=True)
        finally:
            log.close()
        time.sleep(0.2)
        if self.daemons[name].poll() is not None:
            raise RuntimeError(f"{name} exited at once ({self.daemons[name].returncode}):\n{self.log_tail(name)}")

    def start(self) -> None:
        self.write_config()
        f = self.folder
        # -f (--force): as root, with the key and socket in a temporary folder, munged would refuse otherwise.
        self._start("munged", [which("munged"), "-F", "-f", f"--socket={f / 'munge.socket'}",
                               f"--key-file={f / 'munge.key'}", f"--log-file={f / 'log' / 'munged.log'}",
                               f"--pid-file={f / 'munged.pid'}", f"--seed-file={f / 'munged.seed'}"])
        wait_for(lambda: (f / "munge.socket").exists(), 20, "munged's socket", on_timeout=lambda: self.log_tail("munged"))
        self._start("slurmctld", [which("slurmctld"), "-D", "-f", str(self.conf)])
        self._start("slurmd", [which("slurmd"), "-D", "-f", str(self.conf)])
        # Should this process die without stop() (SIGKILL, a CI timeout), the watchdog ends the cluster.
        self.watchdog = subprocess.Popen(
            [sys.executable, __file__, "watchdog", str(os.getpid()), str(self.folder),
             *(str(d.pid) for d in self.daemons.values())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(self.node_idle, 60, f"node {self.host} to be idle", interval=0.5, on_timeout=self.diagnostics)

    def node_idle(self) -> bool:
        for name, daemon in self.daemons.items():
            if daemon.poll() is not None:
                raise RuntimeError(f"{name} exited ({daemon.returncode}):\n{self.diagnostics()}")
        result = self.run(["sinfo", "-h", "-n", self.host, "-o", "%T"], check=False)
        return result.returncode == 0 and result.stdout.strip() == "idle"

    def step_daemons(self) -> set[int]:
        """PIDs of the slurmstepd processes of this cluster: they hold the sockets in our spool dir."""
        return pids_holding(listening_socket_inodes(self.folder / "spool"))

    def remember_steps(self) -> None:
        for pid in self.step_daemons():
            session = session_of(pid)
            if session is not None:
                self.step_sessions.add(session)

    def ours(self) -> dict[int, set[int]]:
        """Live processes this cluster started: the daemons' sessions and every job step's session."""
        self.remember_steps()
        return sessions_of({d.pid for d in self.daemons.values()} | self.step_sessions)

    def stop(self) -> list[str]:
        """Cancel every job, stop the daemons (SIGTERM, then SIGKILL), end whatever remains of their
        sessions. Returns a line per process that had to be killed (empty when all ended by themselves)."""
        killed: list[str] = []
        with contextlib.suppress(Exception):
            if self.daemons.get("slurmctld") and self.daemons["slurmctld"].poll() is None:
                self.remember_steps()
                jobs = self.run(["squeue", "-h", "-o", "%i"], check=False, timeout=15).stdout.split()
                if jobs:
                    self.run(["scancel", *jobs], check=False, timeout=15)
                    with contextlib.suppress(AssertionError):
                        wait_for(lambda: not self.step_daemons() and not self.run(
                            ["squeue", "-h", "-t", "R,CG", "-o", "%i"], check=False, timeout=15).stdout.strip(),
                            30, "cancelled jobs to end")
        self.remember_steps()
        for name in ("slurmd", "slurmctld", "munged"):
            daemon = self.daemons.get(name)
            if daemon is None or daemon.poll() is not None:
                continue
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                killed.append(f"{daemon.pid} {name} (did not stop on SIGTERM)")
                daemon.kill()
                daemon.wait(timeout=10)
        deadline = time.monotonic() + 10
        while self.ours() and time.monotonic() < deadline:
            time.sleep(0.2)
        for session, pids in self.ours().items():
            for pid in pids:
                killed.append(f"{pid} {describe(pid)} (left in session {session})")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not self.ours(), 10, "killed processes to go")
        if self.watchdog is not None:
            (self.folder / WATCHDOG_OFF).touch()
            try:
                self.watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.watchdog.kill()
                self.watchdog.wait(timeout=10)
        return killed

    @classmethod
    @contextlib.contextmanager
    def started(cls, keep: bool = False) -> Iterator["Cluster"]:
        """Install what is missing, start a cluster in a fresh folder, always stop it (and remove the folder
        unless `keep` or ODMAR_SLURM_KEEP=1)."""
        ensure_installed()
        folder = make_folder()
        cluster = cls(folder)
        # SIGTERM (a CI timeout, `timeout`) would end Python at once, skipping stop(): make it unwind instead.
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            cluster.start()
            yield cluster
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the stop short
            try:
                killed = cluster.stop()
            finally:
                signal.signal(signal.SIGTERM, previous)
            if not keep and os.environ.get("ODMAR_SLURM_KEEP") != "1":
                shutil.rmtree(folder, ignore_errors=True)
            if killed:
                raise AssertionError("processes of the test cluster had to be killed:\n" + "\n".join(killed))

    # ------------------------------------------------------------------ commands

    def run(self, command: list[str], check: bool = True, timeout: float = 60,
            env: Mapping[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        full = [which(command[0]) or command[0], *command[1:]]
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                                env={**self.env, **(env or {})}, cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def sbatch(self, args: list[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
        """Submit; return the job id."""
        out = self.run(["sbatch", "--parsable", *args], env=env, cwd=cwd).stdout.strip()
        return out.split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...); {} once Slurm forgot the job."""
        result = self.run(["scontrol", "show", "job", "-o", job_id], check=False, timeout=15)
        if result.returncode != 0:
            return {}
        return dict(re.findall(r"(\S+?)=(\S*)", result.stdout))

    def log_tail(self, name: str, lines: int = 20) -> str:
        texts = []
        for path in (self.folder / "log" / f"{name}.out", self.folder / "log" / f"{name}.log"):
            if path.exists():
                texts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    def diagnostics(self) -> str:
        sinfo = self.run(["sinfo", "-N", "-l"], check=False, timeout=15)
        squeue = self.run(["squeue", "-l"], check=False, timeout=15)
        return "\n".join([sinfo.stdout + sinfo.stderr, squeue.stdout + squeue.stderr,
                          *(self.log_tail(name) for name in ("munged", "slurmctld", "slurmd"))])


if __name__ == "__main__" and len(sys.argv) >= 4 and sys.argv[1] == "watchdog":
    watchdog(int(sys.argv[2]), Path(sys.argv[3]), {int(pid) for pid in sys.argv[4:]})
