"""How a run ends when the process does: normal exit, uncaught exception, SIGTERM, fork."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PRELUDE = textwrap.dedent("""
    import json, os, signal, sys, time
    import trainmon

    class FilePublisher:
        def __init__(self, path):
            self.path = path
        def publish(self, event):
            with open(self.path, "a") as file:
                file.write(json.dumps(event, default=str) + "\\n")
            return True
        def flush(self, timeout_s=10.0):
            return True
        def close(self, timeout_s=5.0):
            pass

    run = trainmon.init("llm", publisher=FilePublisher(sys.argv[1]), heartbeat_s=60)
    run.log({"loss": 1.0}, step=3)
""")


def run_script(body: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    events = tmp_path / "events.jsonl"
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "TRAINMON_"))}
    environ.update(PYTHONPATH=str(ROOT), TRAINMON_REGISTRY_DIR=str(tmp_path / "procs"))
    done = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body), str(events)],
                          capture_output=True, text=True, timeout=60, env=environ)
    lines = events.read_text().splitlines() if events.exists() else []
    return done, [json.loads(line) for line in lines]


def ends(events: list[dict]) -> list[tuple[str, int | None]]:
    return [(event["status"], event.get("step")) for event in events if event["kind"] == "run_end"]


def test_normal_exit_without_finish_is_finished(tmp_path: Path) -> None:
    done, events = run_script("", tmp_path)
    assert done.returncode == 0, done.stderr
    assert ends(events) == [("finished", 3)]
    assert list((tmp_path / "procs").iterdir()) == []  # unregistered


def test_uncaught_exception_is_crashed(tmp_path: Path) -> None:
    done, events = run_script("raise RuntimeError('diverged')", tmp_path)
    assert done.returncode == 1 and "diverged" in done.stderr  # the previous excepthook still printed it
    assert ends(events) == [("crashed", 3)]


def test_sys_exit_is_finished(tmp_path: Path) -> None:
    # Python tells atexit nothing about the exit code: even sys.exit(2) ends "finished" (docs/sdk.md)
    done, events = run_script("sys.exit(0)", tmp_path)
    assert done.returncode == 0 and ends(events) == [("finished", 3)]


def test_sigterm_finishes_killed_then_dies_of_sigterm(tmp_path: Path) -> None:
    done, events = run_script("os.kill(os.getpid(), signal.SIGTERM); time.sleep(10); print('survived')", tmp_path)
    assert done.returncode == -signal.SIGTERM
    assert "survived" not in done.stdout
    assert ends(events) == [("killed", 3)]


def test_users_own_sigterm_handler_is_left_alone(tmp_path: Path) -> None:
    body = """
        signal.signal(signal.SIGTERM, lambda *a: print("mine"))  # installed after init: theirs wins
        os.kill(os.getpid(), signal.SIGTERM)
        run.finish()
    """
    done, events = run_script(body, tmp_path)
    assert done.returncode == 0 and "mine" in done.stdout
    assert ends(events) == [("finished", 3)]


def test_handler_not_installed_over_an_existing_one(tmp_path: Path) -> None:
    body = """
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        run.finish()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # given back when no run is open
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        second = trainmon.init("llm", publisher=FilePublisher(sys.argv[1]), heartbeat_s=60)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        second.finish()
    """
    done, _ = run_script(body, tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_leaves_the_parents_run_alone(tmp_path: Path) -> None:
    body = """
        import warnings
        pid = os.fork()
        if pid == 0:  # e.g. a DataLoader worker
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                run.log({"loss": 2.0})
                run.finish()
            os._exit(0 if any("forked child" in str(w.message) for w in caught) else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        run.log({"loss": 0.5})
        run.finish()
    """
    done, events = run_script(body, tmp_path)
    assert done.returncode == 0, done.stderr
    assert [event["values"]["loss"] for event in events if event["kind"] == "metrics"] == [1.0, 0.5]
    assert ends(events) == [("finished", 4)]
