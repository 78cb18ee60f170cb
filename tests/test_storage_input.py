"""Input from an object store through fsspec: a real S3 endpoint on loopback (moto's server,
s3fs as the client) gives the same kept ids as the same files on local disk, for Parquet,
JSON Lines and a saved dataset; a missing bucket or backend is one line, exit 2."""

from __future__ import annotations

import pytest
from conftest import BUCKET, cli, upload
from test_formats import DEDUP, make_rows, write_as

from curate.commands.inspect import verify_output
from curate.io.inputs import ColumnSpec, InputSet
from curate.io.parts import read_parts


def kept_ids(out) -> list[str]:
    return read_parts(out / "kept").column("id").to_pylist()


@pytest.mark.parametrize("fmt", [".parquet", ".jsonl.gz", "hf"])
def test_s3_input_gives_the_local_kept_ids(tmp_path, capsys, s3, fmt):
    endpoint, fs = s3
    source = write_as(tmp_path, fmt, make_rows(300, seed=7), parts=3)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(DEDUP)
    assert cli(["run", str(pipeline), "-i", str(source), "-o", str(tmp_path / "local"), "--quiet"], capsys)[0] == 0
    url = upload(fs, source, f"{tmp_path.name}/in")
    options = [
        "--storage-option",
        f"endpoint_url={endpoint}",
        "--storage-option",
        "key=testing",
        "--storage-option",
        "secret=testing",
    ]
    code, err = cli(["run", str(pipeline), "-i", url, "-o", str(tmp_path / "remote"), "--quiet", *options], capsys)
    assert code == 0, err
    assert kept_ids(tmp_path / "remote") == kept_ids(tmp_path / "local")
    assert (
        read_parts(tmp_path / "remote" / "removed").to_pylist()
        == read_parts(tmp_path / "local" / "removed").to_pylist()
    )


def test_s3_glob_with_environment_credentials_and_verify(tmp_path, capsys, s3, aws_env):
    _, fs = s3
    source = write_as(tmp_path, ".jsonl.zst", make_rows(200, seed=8), parts=2)
    (source / "notes.txt").write_text("not input")
    base = upload(fs, source, f"{tmp_path.name}/in")
    code, err = cli(["dedup", "-i", f"{base}/*.jsonl.zst", "-o", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0, err
    inputs = InputSet.scan(f"{base}/*.jsonl.zst", ColumnSpec())
    assert [f.path for f in inputs.files] == [f"{base}/shard-00.jsonl.zst", f"{base}/shard-01.jsonl.zst"]
    report = verify_output(tmp_path / "out")
    assert report.ok and report.input_rows == 200


def test_resume_fingerprints_s3_objects(tmp_path, capsys, s3, aws_env):
    _, fs = s3
    source = write_as(tmp_path, ".jsonl", make_rows(100, seed=9), parts=1)
    url = upload(fs, source, f"{tmp_path.name}/in")
    args = ["dedup", "-i", url, "-o", str(tmp_path / "out"), "--quiet"]
    assert cli(args, capsys)[0] == 0
    assert cli([*args, "--resume"], capsys)[0] == 0
    fs.pipe(
        f"{url.removeprefix('s3://')}/shard-00.jsonl",
        (source / "shard-00.jsonl").read_bytes().replace(b"doc-00050", b"doc-x0050"),
    )
    code, err = cli([*args, "--resume"], capsys)
    assert code == 2 and "input files changed" in err


def test_missing_bucket_and_prefix_name_the_url(tmp_path, capsys, aws_env):
    for url in (f"s3://no-such-bucket-{tmp_path.name.lower()}/in/", f"s3://{BUCKET}/nothing-here/"):
        code, err = cli(["dedup", "-i", url, "-o", str(tmp_path / "out"), "--quiet"], capsys)
        assert code == 2 and url in err and "does not exist" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "kept").exists()


def test_file_urls_are_local_paths(tmp_path, capsys):
    source = write_as(tmp_path, ".jsonl", make_rows(50, seed=1), parts=1)
    code, err = cli(["dedup", "-i", f"file://{source}", "-o", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0, err
    assert InputSet.scan(f"file://{source}").files[0].path == str(source / "shard-00.jsonl")
    code, err = cli(["dedup", "-i", f"file://{source}", "-o", str(source / "out"), "--quiet"], capsys)
    assert code == 2 and "inside the input" in err
