"""The real-Slurm test's own machinery (tests/slurm_cluster.py), without Slurm: when it skips, and its
watchdog, which ends a cluster whose test process died. Part of the ordinary serial pass."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import slurm_cluster
from slurm_cluster import CannotRun, ensure_installed, sessions_of, wait_for


def test_not_root_is_a_reason_to_skip(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(CannotRun, match="needs root"):
        ensure_installed()


def test_missing_slurm_without_apt_get_is_a_reason_to_skip(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(slurm_cluster, "which", lambda program: None)
    with pytest.raises(CannotRun, match="no apt-get to install slurm-wlm munge"):
        ensure_installed()


def test_a_failed_install_is_a_reason_to_skip_and_leaves_no_policy_behind(monkeypatch, tmp_path):
    """apt-get fails (no registry): install, update, install again; policy-rc.d forbids starting daemons
    meanwhile and is gone afterwards."""
    log, policy = tmp_path / "apt.log", tmp_path / "policy-rc.d"
    apt = tmp_path / "apt-get"
    apt.write_text(f'#!/bin/sh\necho "$* policy=$(test -x {policy} && {policy}; echo $?)" >> {log}\n'
                   '[ "$1" = update ] && exit 0\necho "E: Unable to locate package slurm-wlm" >&2\nexit 100\n')
    apt.chmod(0o755)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(slurm_cluster, "which", lambda program: str(apt) if program == "apt-get" else None)
    monkeypatch.setattr(slurm_cluster, "POLICY_RC_D", policy)
    with pytest.raises(CannotRun, match="(?s)could not install slurm-wlm munge.*Unable to locate package"):
        ensure_installed()
    calls = log.read_text().splitlines()
    assert [call.split()[0] for call in calls] == ["install", "update", "install"]
    assert all(call.endswith("policy=101") for call in calls), calls
    assert "--no-install-recommends slurm-wlm munge" in calls[0]
    assert not policy.exists()


def test_the_watchdog_ends_the_cluster_when_its_test_process_dies(tmp_path):
    """Fake daemons (each a session with a child) and a fake test process: kill the latter, and the watchdog
    ends every process of those sessions and removes the folder."""
    folder = tmp_path / "cluster"
    (folder / "spool").mkdir(parents=True)
    daemons = [subprocess.Popen(["bash", "-c", "sleep 300 & wait"], start_new_session=True) for _ in range(2)]
    parent = subprocess.Popen(["sleep", "300"])
    watchdog = subprocess.Popen([sys.executable, slurm_cluster.__file__, "watchdog", str(parent.pid), str(folder),
                                 *(str(d.pid) for d in daemons)], start_new_session=True)
    try:
        sessions = {d.pid for d in daemons}
        wait_for(lambda: all(len(pids) == 2 for pids in sessions_of(sessions).values()), 10, "fake daemons")
        time.sleep(1.5)
        assert watchdog.poll() is None  # the test process lives: nothing happens
        parent.kill()
        parent.wait()
        watchdog.wait(timeout=30)
        for daemon in daemons:
            daemon.wait(timeout=10)
        assert sessions_of(sessions) == {}
        assert not folder.exists()
    finally:
        for process in (*daemons, parent, watchdog):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_the_watchdog_leaves_a_cluster_that_was_stopped_alone(tmp_path):
    folder = tmp_path / "cluster"
    folder.mkdir()
    (folder / slurm_cluster.WATCHDOG_OFF).touch()
    watchdog = subprocess.run([sys.executable, slurm_cluster.__file__, "watchdog", str(os.getpid()), str(folder)],
                              timeout=30)
    assert watchdog.returncode == 0 and folder.exists()
