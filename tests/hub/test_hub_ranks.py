"""Multi-process push: only rank zero uploads, every rank gets the same URL (real gloo processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TOKEN
from fake_hub import FakeHub

REPO = "alice/ddp-adapter"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.multiprocess
def test_only_rank_zero_uploads(fake_hub: FakeHub, key_dirs, make_package, tmp_path: Path) -> None:
    package = make_package()
    port = _free_port()
    script = Path(__file__).with_name("multirank_push.py")
    procs = []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   HF_ENDPOINT=fake_hub.url, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / f"hf{rank}"))
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(package), str(key_dirs["publisher"]), REPO],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))

    url = f"{fake_hub.url}/{REPO}"
    assert [(r["env_url"], r["group_url"]) for r in results] == [(url, url), (url, url)]
    creates = [r for r in fake_hub.requests if r.path == "/api/repos/create"]
    commits = [r for r in fake_hub.requests if r.method == "POST" and "/commit/" in r.path]
    assert len(creates) == 2  # one per push call on rank 0 only (second push: 409 exists)
    assert len(commits) == 1  # the second push is a no-op
    assert results[0]["error"] is not None
    assert "not a TSSP package folder" in results[0]["error"]
    assert results[1]["error"].startswith("rank 0 could not push")
