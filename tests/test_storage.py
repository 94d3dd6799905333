"""nst_core.batch.storage against a local folder and an S3 server, through the same cases."""

from __future__ import annotations

import os
import pickle
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from s3_server import volume_slots

from nst_core.batch import storage
from nst_core.batch.storage import StorageError
from nst_core.errors import NstError


def put(root: str, *names: str, data: bytes = b"x") -> list[str]:
    uris = [storage.join(root, n) for n in names]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda uri: storage.write_bytes(uri, data), uris))
    return uris


@pytest.fixture
def fresh_clients():
    """Tests that change AWS_* settings must not leave their client behind."""
    storage.reset_clients()
    yield
    storage.reset_clients()


# ------------------------------------------------------------------ both backends


def test_round_trip_and_overwrite(storage_root):
    uri = storage.join(storage_root, "a/b/data.bin")
    storage.write_bytes(uri, b"\x00first")
    assert storage.read_bytes(uri) == b"\x00first"
    storage.write_bytes(uri, b"second")
    assert storage.read_bytes(uri) == b"second"


def test_exists_and_size(storage_root):
    uri = storage.join(storage_root, "s.txt")
    assert not storage.exists(uri)
    with pytest.raises(StorageError, match="s.txt"):
        storage.size(uri)
    storage.write_bytes(uri, b"12345")
    assert storage.exists(uri)
    assert storage.size(uri) == 5


def test_list_prefix_is_recursive_sorted_and_folder_bounded(storage_root):
    a1, a2, _, _ = put(storage_root, "a/sub/2.txt", "a/1.txt", "ab/3.txt", "c.txt")
    assert storage.list_prefix(storage.join(storage_root, "a")) == sorted([a1, a2])
    assert len(storage.list_prefix(storage_root)) == 4
    assert storage.list_prefix(storage_root) == sorted(storage.list_prefix(storage_root))
    assert storage.list_prefix(storage.join(storage_root, "missing")) == []


GLOB_FILES = [
    "img/a.jpg",
    "img/b.png",
    "img/x1.jpg",
    "img/x2.jpg",
    "img/xy.jpg",
    "img/sub/c.jpg",
    "img/sub/deep/d.jpg",
    "imgs/e.jpg",
]


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("img/*.jpg", ["img/a.jpg", "img/x1.jpg", "img/x2.jpg", "img/xy.jpg"]),
        ("img/x?.jpg", ["img/x1.jpg", "img/x2.jpg", "img/xy.jpg"]),
        ("img/x[12].jpg", ["img/x1.jpg", "img/x2.jpg"]),
        ("img/x[!1].jpg", ["img/x2.jpg", "img/xy.jpg"]),
        ("img/*/c.jpg", ["img/sub/c.jpg"]),
        ("img/**/c.jpg", ["img/sub/c.jpg"]),
        ("img/sub/**/c.jpg", ["img/sub/c.jpg"]),  # ** matches zero segments
        ("img/**/d.jpg", ["img/sub/deep/d.jpg"]),
        (
            "img/**/*.jpg",
            ["img/a.jpg", "img/sub/c.jpg", "img/sub/deep/d.jpg"]
            + ["img/x1.jpg", "img/x2.jpg", "img/xy.jpg"],
        ),
        ("img/sub/**", ["img/sub/c.jpg", "img/sub/deep/d.jpg"]),
        ("im*/e.jpg", ["imgs/e.jpg"]),
        ("img/a.jpg", ["img/a.jpg"]),  # no wildcard: the file itself
        ("img/*.gif", []),
        ("nothing/*.jpg", []),
        ("img/none.jpg", []),
    ],
)
def test_glob(storage_root, pattern, expected):
    put(storage_root, *GLOB_FILES)
    found = storage.glob(storage.join(storage_root, pattern))
    assert found == sorted(storage.join(storage_root, e) for e in expected)


def test_move(storage_root):
    src, dst = storage.join(storage_root, "in/m.txt"), storage.join(storage_root, "out/new/m.txt")
    storage.write_bytes(src, b"moving")
    storage.move(src, dst)
    assert not storage.exists(src)
    assert storage.read_bytes(dst) == b"moving"
    with pytest.raises(StorageError, match="m.txt"):
        storage.move(src, dst)


def test_delete_including_missing(storage_root):
    (uri,) = put(storage_root, "d.txt")
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # already gone: fine


def test_write_if_absent(storage_root):
    uri = storage.join(storage_root, "claims/job.json")
    assert storage.write_if_absent(uri, b"mine") is True
    assert storage.write_if_absent(uri, b"theirs") is False
    assert storage.read_bytes(uri) == b"mine"
    assert storage.list_prefix(storage.join(storage_root, "claims")) == [uri]


def test_write_if_absent_has_one_winner(storage_root):
    uri = storage.join(storage_root, "race.lock")
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: storage.write_if_absent(uri, b"%d" % i), range(8)))
    assert won.count(True) == 1
    assert storage.read_bytes(uri) == b"%d" % won.index(True)


def test_listing_past_1000_entries(storage_root):
    names = [f"many/{i:04d}.txt" for i in range(1050)]
    put(storage_root, *names)
    listed = storage.list_prefix(storage.join(storage_root, "many"))
    assert listed == sorted(storage.join(storage_root, n) for n in names)
    assert len(storage.glob(storage.join(storage_root, "many/*.txt"))) == 1050


def test_large_object_round_trip(storage_root):
    data = os.urandom(20 * 1024 * 1024)
    uri = storage.join(storage_root, "big.bin")
    storage.write_bytes(uri, data)
    assert storage.size(uri) == len(data)
    assert storage.read_bytes(uri) == data


# ------------------------------------------------------------------ S3 only


@pytest.mark.parametrize(
    "filename, content_type",
    [
        ("r.json", "application/json"),
        ("r.md", "text/markdown"),
        ("r.yaml", "application/yaml"),
        ("r.jpg", "image/jpeg"),
        ("r.png", "image/png"),
        ("r.unknownext", "application/octet-stream"),
    ],
)
def test_s3_content_type(s3_bucket, filename, content_type):
    uri = f"{s3_bucket}/{filename}"
    storage.write_bytes(uri, b"{}")
    bucket = s3_bucket.removeprefix("s3://")
    head = storage.s3_client().head_object(Bucket=bucket, Key=filename)
    assert head["ContentType"] == content_type


def test_s3_explicit_content_type(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/x.bin", b"a", content_type="text/plain")
    bucket = s3_bucket.removeprefix("s3://")
    assert storage.s3_client().head_object(Bucket=bucket, Key="x.bin")["ContentType"] == (
        "text/plain"
    )


def test_s3_test_server_has_a_volume_for_every_bucket(s3_server):
    # Each bucket's first write takes a volume of its own; with weed's default (free disk /
    # 1 GiB) a session's later buckets failed every PUT with InternalError on a 70 GB disk.
    assert volume_slots(s3_server) >= 500


@pytest.mark.parametrize("wrong", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_s3_wrong_credentials(s3_bucket, monkeypatch, fresh_clients, wrong):
    uri = f"{s3_bucket}/x.txt"
    storage.write_bytes(uri, b"a")
    secret = "NotTheSecret0123456789abcdef"
    monkeypatch.setenv(wrong, secret)
    storage.reset_clients()
    with pytest.raises(StorageError) as caught:
        storage.read_bytes(uri)
    assert "S3 rejected the credentials" in str(caught.value)
    assert uri in str(caught.value)
    assert secret not in str(caught.value)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(caught.value)


def test_s3_missing_bucket_and_key(s3_bucket):
    missing_bucket = "s3://no-such-bucket-nst/k.txt"
    with pytest.raises(StorageError) as caught:
        storage.read_bytes(missing_bucket)
    assert str(caught.value) == f"{missing_bucket}: bucket no-such-bucket-nst does not exist"
    with pytest.raises(StorageError, match="no-such-bucket-nst"):
        storage.list_prefix("s3://no-such-bucket-nst/a")
    missing_key = f"{s3_bucket}/nope.txt"
    with pytest.raises(StorageError) as caught:
        storage.read_bytes(missing_key)
    assert str(caught.value) == f"{missing_key}: no such object"
    assert caught.value.uri == missing_key
    assert not caught.value.transient  # permanent: retrying cannot fix it


def test_s3_unreachable_endpoint_fails_fast(monkeypatch, fresh_clients):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "NST_S3_MAX_ATTEMPTS": "2",
        "NST_S3_CONNECT_TIMEOUT": "1",
        "NST_S3_READ_TIMEOUT": "1",
    }.items():
        monkeypatch.setenv(key, value)
    storage.reset_clients()
    client = storage.s3_client()
    # "Fast" as the settings make it, counted rather than timed: the attempts botocore made
    # and the timeout each had, whatever the machine's speed.
    attempts = []
    client.meta.events.register(
        "before-send.s3.*", lambda **kwargs: attempts.append(kwargs["event_name"])
    )
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint") as info:
        storage.read_bytes("s3://bucket/key.txt")
    # The first attempt and NST_S3_MAX_ATTEMPTS retries (botocore's max_attempts counts
    # retries), not botocore's default of 5.
    assert attempts == ["before-send.s3.GetObject"] * 3
    assert client.meta.config.connect_timeout == 1 and client.meta.config.read_timeout == 1
    assert info.value.transient  # a batch retries the unit instead of failing its jobs


def test_s3_no_credentials(monkeypatch, fresh_clients, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # skip the slow instance probe
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    storage.reset_clients()
    with pytest.raises(StorageError, match="no S3 credentials found"):
        storage.read_bytes("s3://bucket/key.txt")


def test_s3_key_required():
    with pytest.raises(StorageError, match="no object key"):
        storage.read_bytes("s3://bucket")


def test_s3_glob_wildcard_bucket_rejected():
    with pytest.raises(StorageError, match="bucket name"):
        storage.glob("s3://buck*/x.jpg")


# ------------------------------------------------------------------ local only


def test_failed_write_keeps_old_content_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.txt"
    storage.write_bytes(str(target), b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="keep.txt: No space left on device"):
        storage.write_bytes(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_atomic_write_still_works(tmp_path):
    storage.atomic_write(tmp_path / "a.txt", b"direct")
    assert (tmp_path / "a.txt").read_bytes() == b"direct"


def test_local_write_creates_folders_and_lists_no_temp_files(tmp_path):
    uri = str(tmp_path / "deep" / "er" / "f.txt")
    storage.write_bytes(uri, b"x")
    (tmp_path / "deep" / ".f.txt.abc.part").write_bytes(b"half")
    assert storage.list_prefix(str(tmp_path)) == [uri]
    assert storage.write_if_absent(uri, b"y") is False
    assert sorted(os.listdir(tmp_path / "deep" / "er")) == ["f.txt"]


def test_local_errors(tmp_path):
    with pytest.raises(StorageError, match="no such file"):
        storage.read_bytes(str(tmp_path / "missing.txt"))
    with pytest.raises(StorageError, match="is a directory"):
        storage.read_bytes(str(tmp_path))
    assert storage.list_prefix(str(tmp_path / "missing")) == []


def test_local_relative_glob(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("c.txt", "img/a.jpg", "img/b.jpg"):
        storage.write_bytes(path, b"x")
    assert storage.glob("img/*.jpg") == ["img/a.jpg", "img/b.jpg"]
    assert storage.glob("*.txt") == ["c.txt"]
    assert storage.glob("**/a.jpg") == ["img/a.jpg"]


def test_cross_backend_move(tmp_path, s3_bucket):
    local, remote = str(tmp_path / "l.txt"), f"{s3_bucket}/r/l.txt"
    storage.write_bytes(local, b"travel")
    storage.move(local, remote)
    assert not os.path.exists(local)
    storage.move(remote, local)
    assert storage.read_bytes(local) == b"travel"
    assert not storage.exists(remote)


# ------------------------------------------------------------------ URIs


@pytest.mark.parametrize(
    "uri", ["http://h/x", "https://h/x", "file:///tmp/x", "gs://b/x", "ftp://h/x", "S3://b/k"]
)
def test_check_uri_rejects_other_schemes(uri):
    with pytest.raises(StorageError, match="only local paths and s3://bucket/key are supported"):
        storage.check_uri(uri)
    with pytest.raises(StorageError):
        storage.read_bytes(uri)


@pytest.mark.parametrize("uri", ["s3://", "s3:///key"])
def test_check_uri_rejects_missing_bucket(uri):
    with pytest.raises(StorageError, match="no bucket"):
        storage.check_uri(uri)


@pytest.mark.parametrize("uri", ["/abs/x.jpg", "rel/x.jpg", "x.jpg", "s3://b/k", "s3://b"])
def test_check_uri_accepts(uri):
    storage.check_uri(uri)


def test_predicates():
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/s3/k")
    assert all(storage.has_glob(p) for p in ("a/*.jpg", "a?.jpg", "[ab].jpg"))
    assert not storage.has_glob("s3://b/a/x.jpg")


@pytest.mark.parametrize(
    "base, relative, expected",
    [
        ("s3://b/manifests", "styles/x.jpg", "s3://b/manifests/styles/x.jpg"),
        ("s3://b/manifests/", "./styles/./x.jpg", "s3://b/manifests/styles/x.jpg"),
        ("s3://b/manifests", "../styles/x.jpg", "s3://b/styles/x.jpg"),
        ("s3://b", "x.jpg", "s3://b/x.jpg"),
        ("s3://b/m", "s3://other/y.jpg", "s3://other/y.jpg"),
        ("s3://b/m", "/abs/y.jpg", "/abs/y.jpg"),
        ("/data/m", "./in/../x.jpg", "/data/m/x.jpg"),
        ("data/m", "x.jpg", os.path.join("data", "m", "x.jpg")),
        ("/data/m", "s3://b/y.jpg", "s3://b/y.jpg"),
        ("/data/m", "/abs/y.jpg", "/abs/y.jpg"),
    ],
)
def test_join(base, relative, expected):
    assert storage.join(base, relative) == expected


def test_join_cannot_leave_the_bucket():
    with pytest.raises(StorageError, match="above the bucket"):
        storage.join("s3://b/m", "../../x.jpg")


@pytest.mark.parametrize(
    "uri, parent, name, stem",
    [
        ("s3://b/a/x.yaml", "s3://b/a", "x.yaml", "x"),
        ("s3://b/x.yaml", "s3://b", "x.yaml", "x"),
        ("s3://b/a/b/arch.tar.gz", "s3://b/a/b", "arch.tar.gz", "arch.tar"),
        ("/data/a/x.yaml", "/data/a", "x.yaml", "x"),
        ("x.yaml", ".", "x.yaml", "x"),
    ],
)
def test_parent_name_stem(uri, parent, name, stem):
    assert storage.parent(uri) == parent
    assert storage.name(uri) == name
    assert storage.stem(uri) == stem


def test_storage_error_shape():
    error = StorageError("s3://b/k", "no such object")
    assert isinstance(error, NstError)
    assert str(error) == "s3://b/k: no such object"
    copy = pickle.loads(pickle.dumps(error))  # crosses process boundaries in Prefect
    assert (copy.uri, copy.cause, str(copy)) == (error.uri, error.cause, str(error))
