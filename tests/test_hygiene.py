"""The hygiene fixtures themselves must be able to fail."""

import asyncio
import subprocess
import sys
import textwrap

import pytest


def _run_pytest(tmp_path, body: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_probe.py"
    test.write_text(textwrap.dedent(body))
    conftest = __import__("pathlib").Path(__file__).with_name("conftest.py")
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "asyncio",
         "-o", "asyncio_mode=auto",
         "-o", "asyncio_default_fixture_loop_scope=function", str(test)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
    )


@pytest.mark.parametrize(
    "body",
    [
        # blocks the loop
        """
        import time
        async def test_blocks():
            time.sleep(0.01)
        """,
        # leaks a task
        """
        import asyncio
        async def test_leaks_task():
            asyncio.get_running_loop().create_task(asyncio.sleep(30))
        """,
        # leaks a thread
        """
        import threading, time
        def test_leaks_thread():
            threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        """,
    ],
    ids=["blocking-call", "leaked-task", "leaked-thread"],
)
def test_hygiene_fixtures_fail_bad_tests(tmp_path, body):
    result = _run_pytest(tmp_path, body)
    assert result.returncode == 1, result.stdout + result.stderr


async def test_clean_async_test_passes():
    await asyncio.sleep(0)
