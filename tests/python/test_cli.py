"""The command line: install, version, and one-line errors with a non-zero exit."""

import json
import subprocess

from conftest import rustloop_bin


def run(*args):
    return subprocess.run([str(rustloop_bin()), *args], capture_output=True, text=True)


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("rustloop ")


def test_install_writes_kernelspec(tmp_path):
    result = run("install", "--prefix", str(tmp_path), "--no-prebuild")
    assert result.returncode == 0, result.stderr
    spec_dir = tmp_path / "share/jupyter/kernels/rustloop"
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["argv"][1:] == ["kernel", "--connection-file", "{connection_file}"]
    assert spec["argv"][0] == str(rustloop_bin())
    assert spec["display_name"] == "Rust (rustloop)"
    assert spec["language"] == "rust"
    assert spec["interrupt_mode"] == "message"
    for logo in ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg"):
        assert (spec_dir / logo).stat().st_size > 0


def test_jupyter_kernelspec_list_shows_it(tmp_path):
    run("install", "--prefix", str(tmp_path), "--no-prebuild")
    env = {"JUPYTER_PATH": str(tmp_path / "share/jupyter"), "PATH": __import__("os").environ["PATH"]}
    listing = subprocess.run(
        ["jupyter", "kernelspec", "list", "--json"], capture_output=True, text=True, env=env
    )
    assert listing.returncode == 0, listing.stderr
    assert "rustloop" in json.loads(listing.stdout)["kernelspecs"]


def test_bad_arguments_one_line_error():
    result = run("kernel", "--no-such-flag")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no-such-flag" in lines[0]


def test_unreadable_connection_file_one_line_error(tmp_path):
    result = run("kernel", "--connection-file", str(tmp_path / "missing.json"))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "missing.json" in lines[0]


def test_invalid_connection_file_one_line_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    result = run("kernel", "--connection-file", str(path))
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_curve_keys_refused(tmp_path):
    path = tmp_path / "curve.json"
    path.write_text(json.dumps({
        "shell_port": 50001, "iopub_port": 50002, "stdin_port": 50003, "control_port": 50004,
        "hb_port": 50005, "ip": "127.0.0.1", "key": "k", "transport": "tcp",
        "signature_scheme": "hmac-sha256", "curve_secret_key": "x",
    }))
    result = run("kernel", "--connection-file", str(path))
    assert result.returncode != 0
    assert "transport security" in result.stderr
