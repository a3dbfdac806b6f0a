"""Shared test configuration: deterministic hypothesis runs, no global torch state."""
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _kill_when(cmd, ready, *, log, what, env=None, cwd=None, timeout=120.0, poll=0.01):
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` is true, and return its return code.

    The output goes to the file ``log``; if the process exits before it is ready, or ``timeout``
    seconds pass, the test fails with ``what`` and the log.  The process is always reaped.
    """
    import signal
    import subprocess
    import time

    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                assert proc.poll() is None, open(log).read()
                assert time.monotonic() < deadline, f"{what} (after {timeout:.0f} s)"
                time.sleep(poll)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture
def kill_when():
    """:func:`_kill_when`: run a command and SIGKILL it once a condition holds (resume tests)."""
    return _kill_when
