"""Runs train.py with one rank made to fail, for tests/test_distributed.py.

    FAULT=nan|crash FAULT_RANK=1 FAULT_STEP=3 torchrun ... tests/faulty_train.py <train.py arguments>

nan: that rank's loss becomes NaN at that step (the others stay finite); crash: that rank's
process dies there (os._exit, as an out-of-memory kill or a segfault would), without cleanup.
"""
import os
import runpy
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import train_step  # noqa: E402  (patched before train.py takes its reference)

real_train_step = train_step.train_step
calls = 0


def faulty_train_step(*args, **kwargs):
    global calls
    calls += 1
    result = real_train_step(*args, **kwargs)
    if int(os.environ.get("RANK", 0)) == int(os.environ["FAULT_RANK"]) and calls == int(os.environ["FAULT_STEP"]):
        if os.environ["FAULT"] == "crash":
            os._exit(3)
        result.loss = result.loss * float("nan")
    return result


train_step.train_step = faulty_train_step
sys.argv = [str(REPO_ROOT / "train.py"), *sys.argv[1:]]
runpy.run_path(str(REPO_ROOT / "train.py"), run_name="__main__")
