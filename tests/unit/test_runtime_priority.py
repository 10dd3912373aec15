"""Background work runs at lower OS priority with a torch thread cap (issue 15, item 4).

In a child process, because niceness cannot be lowered back without privileges: a thread that
exists before the block (as the Prefect worker's threads do) is lowered too, the torch thread
count is capped inside the block and restored after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from metaclaw.runtime_priority import thread_cap

CHILD = """
import json, os, threading, torch
from metaclaw.config import TrainingSettings
from metaclaw.runtime_priority import background_priority

torch.set_num_threads(2)
started, stop = threading.Event(), threading.Event()
tid = []
def worker():
    tid.append(threading.get_native_id()); started.set(); stop.wait()
t = threading.Thread(target=worker); t.start(); started.wait()
before = os.getpriority(os.PRIO_PROCESS, 0)
with background_priority(TrainingSettings(nice=15, threads=1)):
    inside = torch.get_num_threads()
    main_nice = os.getpriority(os.PRIO_PROCESS, 0)
    other_nice = os.getpriority(os.PRIO_PROCESS, tid[0])
    later = []
    t2 = threading.Thread(target=lambda: later.append(os.getpriority(os.PRIO_PROCESS, 0)))
    t2.start(); t2.join()
print(json.dumps({"before": before, "inside": inside, "after": torch.get_num_threads(),
                  "main": main_nice, "other": other_nice, "later": later[0]}))
stop.set(); t.join()
"""


def test_background_priority_lowers_every_thread_and_caps_torch_threads() -> None:
    start = os.getpriority(os.PRIO_PROCESS, 0)
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    want = max(15, start)  # never raises priority: an already nicer process stays as it is
    assert seen["before"] == start
    assert seen["main"] == seen["other"] == seen["later"] == want
    assert seen["inside"] == 1 and seen["after"] == 2


def test_thread_cap_defaults_to_half_the_cores() -> None:
    assert thread_cap(0, 2) == 1 and thread_cap(0, 16) == 8 and thread_cap(0, 1) == 1
    assert thread_cap(3, 16) == 3 and thread_cap(0, None) == 1
