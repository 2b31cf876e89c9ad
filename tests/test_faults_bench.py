"""A few trials of the randomized fault suite (bench/faults.py); 100 of them run outside CI."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_a_few_random_fault_trials_leave_nothing_and_resume_exactly():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "faults.py"), "--trials", "4",
                           "--seed", "5"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "4 trials, 0 failed" in proc.stdout
