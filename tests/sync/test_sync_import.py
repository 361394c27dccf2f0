import subprocess
import sys


def test_import_sync_loads_no_io_modules():
    code = (
        "import sys, sync, sync.replica, sync.session, sync.codec, sync.storage\n"
        "bad = [m for m in ('asyncio', 'socket', 'ssl', 'libsql', 'sqlite3', 'p2pgate',"
        " 'aiohttp', 'pycrdt') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_public_api_is_curated():
    import sync

    assert "Replica" in sync.__all__
    for name in sync.__all__:
        assert hasattr(sync, name), name
