"""Each worker's crash file (workers/llm.py): faulthandler writes a fatal signal there, and the
next worker to start reports a file whose process is gone. Workers start together under
`hean up`, so one sweeps the directory while another is making its own file."""

from __future__ import annotations

from pathlib import Path

from support import REPO_ROOT, child_report

# In a worker of its own: its crash file is made while a neighbour sweeps the directory at the
# worst moment, between the file's creation and its lock (injected at the lock).
SCRIPT = """
import fcntl, json, sys
from pathlib import Path
import workers.llm as llm

directory = llm.crash_dir()
directory.mkdir(parents=True)
dead = directory / "1-deadbeef.crash"  # a dead process's file, with nothing in it to report
dead.write_text(llm.CRASH_HEADER + " node=gone pid=1 argv=x\\n")
real_flock, swept = fcntl.flock, []

def flock(handle, operation):
    if not swept and ".crash" in getattr(handle, "name", ""):
        swept.append(None)  # once: the neighbour's own locks come through here too
        swept[0] = llm.send_leftover_crashes(directory, "neighbour")
    return real_flock(handle, operation)

llm.send_leftover_crashes(directory, "self")  # the dead one: removed, this process's sweep
assert not dead.exists()
fcntl.flock = flock
path = llm.install_crash_handler("engine@test")
fcntl.flock = real_flock
print(json.dumps({"swept": swept, "exists": path.exists(), "text": path.read_text() if path.exists() else "",
                  "files": sorted(p.name for p in directory.iterdir())}))
"""


def test_a_crash_file_being_made_is_not_swept_by_a_neighbour(tmp_path: Path) -> None:
    env = {"HEAN_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    seen = child_report(SCRIPT, cwd=REPO_ROOT, env=env, timeout=60)
    assert seen["swept"] == [0]  # the neighbour swept while the file was being made ...
    assert seen["exists"], seen  # ... and left it: its process is alive
    assert "node=engine@test" in seen["text"]
    assert len(seen["files"]) == 1 and seen["files"][0].endswith(".crash"), seen["files"]
    # a clean exit removed it
    assert list((tmp_path / "home" / "crashes").iterdir()) == []


# A worker that died between making its crash file and renaming it left a `*.crash.new`.
STALE_SCRIPT = """
import fcntl, json, os, time
import workers.llm as llm

directory = llm.crash_dir()
directory.mkdir(parents=True)
old = time.time() - 3600  # older than llm.UNFINISHED_STALE_S
names = {"stale": "2-aaaaaaaa.crash.new", "fresh": "3-bbbbbbbb.crash.new", "held": "4-cccccccc.crash.new"}
for kind, name in names.items():
    (directory / name).write_text(llm.CRASH_HEADER + " node=x pid=2 argv=x\\n")
    if kind != "fresh":
        os.utime(directory / name, (old, old))
held = open(directory / names["held"], "rb")
fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live process that has not renamed it yet
sent = llm.send_leftover_crashes(directory, "self")
print(json.dumps({"sent": sent, "files": sorted(p.name for p in directory.iterdir()), "names": names}))
"""


def test_a_dead_workers_unfinished_crash_file_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    env = {"HEAN_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    seen = child_report(STALE_SCRIPT, cwd=REPO_ROOT, env=env, timeout=60)
    names = seen["names"]
    assert seen["sent"] == 0  # nothing in them to report
    # the stale unlocked one is gone; one made just now (its maker may be about to lock it) and
    # one still locked stay
    assert seen["files"] == sorted([names["fresh"], names["held"]]), seen["files"]
