"""Atomic file writes (ddpm_lab/checkpoint_io.py): every file the package must not leave half
written goes through `atomic_write`, and the temporary files a killed writer leaves behind are
removed by the next write into their folder, while those of running writers stay."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import torch

from ddpm_lab.checkpoint_io import (
    AtomicCheckpointIO,
    atomic_save,
    atomic_write_bytes,
    remove_stale_temporaries,
    temporary_file,
)
from ddpm_lab.runs import read_run_info, write_run_info
from tests.helpers import SAVING_LOOP

HOST = socket.gethostname()


def dead_pid() -> int:
    """The pid of a process that has ended (waited for, so it is not running)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    atomic_save({"w": torch.arange(3)}, tmp_path / "x.pt")
    assert torch.equal(torch.load(tmp_path / "x.pt")["w"], torch.arange(3))
    write_run_info(tmp_path, {"id": "abc"})
    assert read_run_info(tmp_path) == {"id": "abc"} and json.loads((tmp_path / "run.json").read_text())
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file.bin", "run.json", "sub", "x.pt"]
    assert temporary_file(path).name == f".file.bin.tmp-{HOST}-{os.getpid()}"


def test_a_write_removes_the_temporaries_of_dead_writers_of_this_host_only(tmp_path):
    dead = dead_pid()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [tmp_path / f".last.ckpt.tmp-{HOST}-{dead}", tmp_path / f".best.ckpt.tmp-{HOST}-{dead}",
                 tmp_path / f".last.ckpt.tmp-{dead}"]                       # no host: this host's
        kept = [tmp_path / f".last.ckpt.tmp-{HOST}-{running.pid}",         # a writer still at work
                tmp_path / f".last.ckpt.tmp-other-host-{dead}",            # another host's writer
                tmp_path / "notes.tmp-1", tmp_path / ".hidden"]            # not temporary files
        for p in stale + kept:
            p.write_bytes(b"half a checkpoint")
        AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in kept)
        assert torch.load(tmp_path / "last.ckpt")["step"] == 1
        assert remove_stale_temporaries(tmp_path) == []
    finally:
        running.kill()
        running.wait()


def test_the_temporary_of_a_writer_killed_mid_write_goes_with_the_next_write(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", SAVING_LOOP, str(path)])
    try:
        deadline = time.time() + 60
        while not (path.exists() and list(tmp_path.glob(".last.ckpt.tmp-*"))) and time.time() < deadline:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    AtomicCheckpointIO().save_checkpoint({"step": -1}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(path)["step"] == -1
