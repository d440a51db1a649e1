"""The muxrec command: exit code 2 with a clear message on bad input; data download end to end
against a local HTTP server serving an archive the test builds (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from muxrec.cli import main
from muxrec.data.movielens import load_ml100k

from tests.conftest import CONFIGS


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "muxrec.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def run_main(capsys, *args: str) -> tuple[int, str]:
    """`muxrec ARGS` in this process (no interpreter start-up): its exit code and stderr. argparse's own
    errors leave through SystemExit, as they do from the command."""
    try:
        code = main(list(args))
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def test_help_everywhere():
    for args in ([], ["train"], ["data", "download"], ["bench", "ctr"], ["evaluate"], ["prepare"],
                 ["encoders", "fit-text"], ["encoders", "align"], ["encoders", "catalog"], ["bench", "encoders"], ["select"], ["bench", "select"]):
        out = run_cli(*args, "--help")
        assert out.returncode == 0 and "usage: muxrec" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "--spec", "missing.yaml", "--model", "deepfm"], "feature spec missing.yaml does not exist"),
    (["train", "--spec", str(CONFIGS / "ml-100k.yaml"), "--model", "nope"], "unknown model 'nope'"),
    (["train", "--spec", str(CONFIGS / "ml-100k.yaml"), "--model", "deepfm", "--epochs", "0"],
     "epochs must be >= 1"),
    (["train", "--spec", str(CONFIGS / "ml-100k.yaml"), "--model", "deepfm", "--sharding", "row_wise",
      "--embedding-optimizer", "adam"], "fused CPU kernels, which have no Adam"),
    (["train", "--spec", str(CONFIGS / "ml-100k.yaml"), "--model", "deepfm", "--sharding", "row_wise",
      "--num-workers", "0"], "num_workers must be >= 1, got 0 (in this process)"),
    (["train", "--spec", str(CONFIGS / "ml-100k.yaml"), "--model", "deepfm", "--num-workers", "-1"],
     "num_workers must be >= 0"),
    (["train", "--spec", str(CONFIGS / "ml-100k-mtl.yaml"), "--model", "esmm", "--task-weighting", "uncertainty",
      "--epochs", "0"], "epochs must be >= 1"),
    (["bench", "mtl", "--dataset", "ml-100k"], "a multi-task benchmark needs a spec with several labels"),
    (["bench", "mtl", "--dataset", "ml-100k-mtl", "--single", "nope"], "configs/models/nope.yaml does not exist"),
    (["evaluate", "--name", "nope"], "no model named 'nope'"),
    (["bench", "ctr", "--dataset", "nope", "--model", "deepfm"], "no dataset spec"),
    (["prepare", "--spec", str(CONFIGS / "ml-100k-text.yaml")], "no model named 'ml-100k-text'"),  # its encoder
    (["encoders", "catalog", "--spec", str(CONFIGS / "ml-100k.yaml"), "--feature", "genres", "--output", "x.parquet"],
     "feature 'genres' is not read by an encoder"),
])
def test_bad_input_exits_2_with_a_message(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_argparse_errors_exit_2():
    out = run_cli("train", "--spec", "x.yaml", "--model", "deepfm", "--epochs", "many")
    assert out.returncode == 2 and "invalid int value: 'many'" in out.stderr
    out = run_cli("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_malformed_spec_exits_2(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nfeatures: [{name: a, kind: categorial}]\n")
    code, err = run_main(capsys, "prepare", "--spec", str(spec), "--out", str(tmp_path / "out"))
    assert code == 2
    assert "features.0.kind" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ---- data download ----------------------------------------------------------------------------

TINY_ML100K = {
    "u.data": "1\t1\t5\t881250949\n2\t2\t3\t891717742\n1\t2\t4\t878887116\n",
    "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n",
    "u.item": "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
              "2|GoldenEye (1995)|||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n",
    "u.genre": "".join(f"{g}|{i}\n" for i, g in enumerate(
        ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
         "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"])),
    "u.occupation": "technician\nother\n",
}


@pytest.fixture
def archive_server(tmp_path):
    """Serve tmp_path/www over HTTP on a free loopback port."""
    www = tmp_path / "www"
    www.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in TINY_ML100K.items():
            zf.writestr(f"ml-100k/{name}", text)
        zf.writestr("ml-100k/README", "tiny")
    (www / "ml-100k.zip").write_bytes(buf.getvalue())
    (www / "junk.zip").write_bytes(b"not a zip at all")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hashlib.sha256(buf.getvalue()).hexdigest()
    server.shutdown()


def test_download_verifies_and_unpacks(archive_server, tmp_path):
    base, sha = archive_server
    dest = tmp_path / "data"
    out = run_cli("data", "download", "ml-100k", "--url", f"{base}/ml-100k.zip", "--checksum", f"sha256:{sha}",
                  "--dest", str(dest))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (dest / "ml-100k").iterdir()) == sorted(TINY_ML100K)
    table = load_ml100k(dest / "ml-100k")
    assert table.num_rows == 3 and table["genres"].to_pylist()[0] == ["Animation", "Children's", "Comedy"]


def test_download_refuses_a_bad_checksum_and_keeps_existing_data(archive_server, tmp_path):
    base, sha = archive_server
    dest = tmp_path / "data"
    (dest / "ml-100k").mkdir(parents=True)
    (dest / "ml-100k" / "u.data").write_text("keep me")
    out = run_cli("data", "download", "ml-100k", "--url", f"{base}/ml-100k.zip", "--checksum", "sha256:" + "0" * 64,
                  "--dest", str(dest))
    assert out.returncode == 2 and "checksum mismatch" in out.stderr
    assert (dest / "ml-100k" / "u.data").read_text() == "keep me"
    assert [p.name for p in dest.iterdir()] == ["ml-100k"]  # no temp files left behind


@pytest.mark.parametrize("path, checksum, message", [
    ("junk.zip", None, "not a zip archive"),
    ("missing.zip", None, "could not download"),
    ("ml-100k.zip", "crc:123", "not of the form ALGORITHM:HEX"),
])
def test_download_errors(archive_server, tmp_path, path, checksum, message):
    base, sha = archive_server
    if checksum is None:
        checksum = "sha256:" + hashlib.sha256((Path(tmp_path) / "www" / path).read_bytes()).hexdigest() \
            if (tmp_path / "www" / path).exists() else f"sha256:{sha}"
    out = run_cli("data", "download", "ml-100k", "--url", f"{base}/{path}", "--checksum", checksum,
                  "--dest", str(tmp_path / "data"))
    assert out.returncode == 2 and message in out.stderr, out.stderr
