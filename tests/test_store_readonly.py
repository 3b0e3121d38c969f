"""A SQLite store whose files cannot be written (``chattr +i``, a read-only mount) answers
UNAVAILABLE naming the file, and works again once they can be: SQLite itself dies of SIGBUS
when it must grow a WAL index it cannot write, which killed the coordinator without a line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import asyncio, subprocess, sys
    from evalfleet.server.store import SqliteJobStore
    from evalfleet.server.store.base import StoreUnavailableError

    PATH = sys.argv[1]
    FILES = [PATH, PATH + "-wal", PATH + "-shm"]

    async def main():
        store = SqliteJobStore(PATH)
        await store.open()
        await store.put_answers("fp", [("r0", b"x")])
        subprocess.run(["chattr", "+i", *FILES], check=True)
        try:
            for i in range(3000):  # enough to outgrow the WAL index SQLite mapped
                await store.put_answers("fp", [(f"r{i}-{j}", b"y" * 4000) for j in range(8)])
            print("WROTE")
        except StoreUnavailableError as exc:
            print("REFUSED", exc.message)
        finally:
            subprocess.run(["chattr", "-i", *FILES], check=True)
        await store.put_answers("fp", [("after", b"z")])
        print("AGAIN", sorted(await store.get_answers("fp", ["r0", "after"])))
        await store.close()

    asyncio.run(main())
""")


def test_an_unwritable_store_is_refused_with_a_line_not_a_sigbus(tmp_path):
    probe = tmp_path / "probe"
    probe.touch()
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i needs root and a file system that supports it")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    path = tmp_path / "store.db"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True,
                          text=True, timeout=120)
    subprocess.run(["chattr", "-i", *(str(path) + s for s in ("", "-wal", "-shm"))],
                   capture_output=True)
    assert done.returncode == 0, f"rc {done.returncode} (-7 is SIGBUS): {done.stderr[-2000:]}"
    lines = done.stdout.splitlines()
    assert lines[0].startswith("REFUSED store sqlite:///"), done.stdout
    assert "cannot be written (Operation not permitted)" in lines[0]
    assert lines[1] == "AGAIN ['after', 'r0']"
