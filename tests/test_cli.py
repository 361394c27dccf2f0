import os
import stat
import subprocess
import sys

from p2pgate.identity.deviceid import DeviceID


def run(*args, home, env=None):
    base = {k: v for k, v in os.environ.items() if k != "P2PGATE_DB_KEY"}
    full_env = {**base, "P2PGATE_HOME": str(home), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "p2pgate", *args],
        capture_output=True, text=True, env=full_env, timeout=60, check=False,
    )


def test_init_creates_identity_store_and_secret_files(tmp_path):
    home = tmp_path / "node"
    result = run("init", "--name", "desk", home=home)
    assert result.returncode == 0, result.stderr
    assert "Name:      desk" in result.stdout
    printed = result.stdout.split("Device ID: ")[1].split()[0]
    for name in ("device.key", "db.key", "admin.token"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    ident = run("id", home=home)
    assert ident.returncode == 0
    assert ident.stdout.strip() == printed
    DeviceID.parse(printed)


def test_init_is_idempotent_and_renames(tmp_path):
    home = tmp_path / "node"
    first = run("init", "--name", "desk", home=home)
    again = run("init", home=home)
    assert "Already initialised" in again.stdout
    assert "Name:      desk" in again.stdout
    renamed = run("init", "--name", "study", home=home)
    assert "Name:      study" in renamed.stdout
    assert first.stdout.split("Device ID: ")[1].split()[0] in renamed.stdout


def test_database_key_from_environment_creates_no_key_file(tmp_path):
    home = tmp_path / "node"
    env = {"P2PGATE_DB_KEY": "an-operator-supplied-key-0123456789"}
    assert run("init", home=home, env=env).returncode == 0
    assert not (home / "db.key").exists()
    wrong = run("node", home=home, env={"P2PGATE_DB_KEY": "wrong"})
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        f"p2pgate: error: cannot open {home / 'p2pgate.db'}: wrong database key, "
        "or not a p2pgate database"
    )


def test_errors_are_one_line_without_traceback_unless_debug(tmp_path):
    home = tmp_path / "missing"
    result = run("id", home=home)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "p2pgate init" in result.stderr
    debug = run("--debug", "id", home=home)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr


def test_data_dir_flag_beats_environment(tmp_path):
    home = tmp_path / "env-home"
    flag = tmp_path / "flag-home"
    result = run("--data-dir", str(flag), "init", home=home)
    assert result.returncode == 0
    assert (flag / "device.key").exists()
    assert not home.exists()
