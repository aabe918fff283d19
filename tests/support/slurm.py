"""A one-machine SLURM for tests: munged, slurmctld and slurmd started as root in a temporary directory.

Everything the daemons use is private to the test: a fresh munge key and socket, a `slurm.conf` naming that
socket (`AuthInfo`), state and spool directories, free localhost ports. slurmctld and slurmd bind the ports that
`slurm.conf` names (they cannot bind port 0 and report it), so a port found free here can be taken by another
process before the daemon binds it: a start whose daemon logs "Address already in use" is retried with fresh
ports. No cgroups: processes are tracked by `proctrack/linuxproc` and tasks are not bound (`task/none`), so it
runs in containers without a cgroup mount.
`SlurmCluster.start` raises `SlurmUnavailable` with the reason when the daemons cannot start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
NODE = "xmodal-node"


class SlurmUnavailable(RuntimeError):
    """The daemons cannot run here (not installed, not root, or one of them did not come up)."""


PORT_TRIES = 3
PORT_TAKEN = "Address already in use"


def _unused_port() -> int:
    """A port free now; only for a daemon that must be told its port in a config file (see the module's notes)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _find(program: str) -> str:
    path = shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/usr/bin/{program}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise SlurmUnavailable(f"{program} is not installed (apt-get install slurm-wlm munge)")
    return path


@dataclass
class SlurmCluster:
    root: Path
    cpus: int = 2
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    def start(self) -> "SlurmCluster":
        if os.geteuid() != 0:
            raise SlurmUnavailable("slurmctld/slurmd must start as root (proctrack/linuxproc, SlurmUser=root)")
        programs = {name: _find(name) for name in (*DAEMONS, "mungekey", "sinfo")}
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key, munge_socket = self.root / "munge" / "munge.key", self.root / "munge" / "munge.socket"
        subprocess.run([programs["mungekey"], "--create", f"--keyfile={key}"], check=True, capture_output=True)
        self._spawn(
            programs["munged"], "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
            f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--log-file={self.root / 'munge' / 'munged.log'}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
        )
        self._wait_for(munge_socket.exists, "munged did not create its socket")
        for _ in range(PORT_TRIES):
            if self._start_slurm_daemons(programs, munge_socket):
                return self
        raise SlurmUnavailable(f"the daemons' ports were taken before they bound them, {PORT_TRIES} times: "
                               f"{self.logs()}")

    def _start_slurm_daemons(self, programs: dict[str, str], munge_socket: Path) -> bool:
        """True once the node is idle; False (daemons stopped) if one of them found its port taken."""
        for log in self._slurm_logs():
            log.unlink()  # this start's logs alone say whether its ports were taken
        self.conf.write_text(self._config(munge_socket))
        daemons = [
            self._spawn(programs["slurmctld"], "-D", "-i", "-f", str(self.conf)),
            self._spawn(programs["slurmd"], "-D", "-N", NODE, "-f", str(self.conf)),
        ]
        try:
            self._wait_for(self.node_idle, "the node did not come up idle")
            return True
        except SlurmUnavailable:
            if not self._port_taken():
                raise
            self._stop(daemons)
            return False

    def _slurm_logs(self) -> list[Path]:
        logs = [path for name in ("slurmctld", "slurmd") for path in self.root.glob(f"{name}.*")]
        return [path for path in logs if path.suffix != ".pid"]

    def _port_taken(self) -> bool:
        return any(PORT_TAKEN in log.read_text(errors="replace") for log in self._slurm_logs())

    def _config(self, munge_socket: Path) -> str:
        root = self.root
        return f"""ClusterName=xmodaltest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_unused_port()}
SlurmdPort={_unused_port()}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=300
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname=localhost CPUs={self.cpus} State=UNKNOWN
PartitionName=test Nodes={NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""

    def _spawn(self, *command: str) -> subprocess.Popen:
        log = open(self.root / f"{Path(command[0]).name}.out", "w")
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env()))
        return self.processes[-1]

    def node_idle(self) -> bool:
        result = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env(), capture_output=True, text=True)
        return result.stdout.strip() == "idle"

    def _wait_for(self, ready, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise SlurmUnavailable(f"{process.args[0]} exited {process.returncode}: {self.logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise SlurmUnavailable(f"{what} within {timeout:.0f} s: {self.logs()}")

    def logs(self, lines: int = 5) -> str:
        tails = []
        for log in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")):
            tail = log.read_text(errors="replace").strip().splitlines()[-lines:]
            tails.append(f"[{log.name}] " + " | ".join(tail))
        return " ".join(tails)

    def stop(self) -> None:
        self._stop(list(self.processes))

    def _stop(self, processes: list[subprocess.Popen]) -> None:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self.processes.remove(process)
