"""RewardConfig is built on first use from the registered methods' REWARD_OPTIONS: threads reading it for the first
time at once all get the one class, none the 'read while the method packages load' error meant for a method
package that reads it while loading."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_RACE = """
import threading
import rerank.trainers.rewards as R
assert "RewardConfig" not in vars(R)
barrier, got, errors = threading.Barrier(8), [], []
def read():
    barrier.wait()
    try:
        got.append(R.RewardConfig)
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
threads = [threading.Thread(target=read) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
assert not errors, errors
assert len(got) == 8 and len(set(map(id, got))) == 1
print("ok")
"""


def test_threads_reading_reward_config_first_all_get_one_class() -> None:
    for _ in range(3):  # a fresh interpreter each time: the class is built on first use
        done = subprocess.run([sys.executable, "-c", _RACE], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
