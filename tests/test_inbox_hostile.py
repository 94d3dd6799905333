"""The inbox against someone who can write only its prefix, on a real S3 server.

Three buckets: the inbox's own, a secrets bucket and another team's bucket; the watcher
holds credentials for all three, as a worker would. Every S3 request the watcher makes is
recorded from botocore's own events, so "nothing outside was touched" counts requests,
not our own wrappers. The batch deployment is a stand-in (conftest's fake_deployment): a
refused manifest must never reach it.
"""

import json
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from imagegen import png_bytes, scene, stripes

from flows import watch
from nst_core.batch import jobs, storage


def _bucket() -> str:
    name = f"test-{uuid.uuid4().hex[:16]}"
    storage.s3_client().create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def buckets(s3_server):
    """inbox: s3://INBOX/drop with one photo and one painting; secrets and teamb beside it."""
    home, secrets, teamb = _bucket(), _bucket(), _bucket()
    storage.write_bytes(f"{home}/drop/photos/a.png", png_bytes(scene(seed=1)))
    storage.write_bytes(f"{home}/drop/paintings/s.png", png_bytes(stripes(seed=1)))
    storage.write_bytes(f"{secrets}/private.png", png_bytes(scene(seed=7)))
    storage.write_bytes(f"{secrets}/deep/er/plans.jpg", b"jpeg bytes of a secret")
    storage.write_bytes(f"{teamb}/outputs/keep.txt", b"team b's")
    return {"inbox": f"{home}/drop", "home": home, "secrets": secrets, "teamb": teamb}


@pytest.fixture
def requests():
    """`.to(bucket)`: the S3 requests (operation, bucket, key or prefix) made to a bucket
    since the fixture started or since `.clear()`."""
    seen: list[tuple[str, str, str]] = []

    def record(params, model, **_):
        where = params.get("Key") or params.get("Prefix") or ""
        seen.append((model.name, params.get("Bucket", ""), where))

    events = storage.s3_client().meta.events
    events.register("before-parameter-build.s3.*", record)
    to = lambda bucket: [s for s in seen if s[1] == bucket.removeprefix("s3://")]  # noqa: E731
    try:
        yield SimpleNamespace(to=to, clear=seen.clear)
    finally:
        events.unregister("before-parameter-build.s3.*", record)


def drop(inbox_uri: str, name: str, text: str) -> str:
    storage.write_bytes(f"{inbox_uri}/{name}", text.encode())
    return f"{inbox_uri}/{name}"


def filed_errors(inbox_uri: str, stem: str) -> list[str]:
    (details,) = storage.glob(f"{inbox_uri}/failed/{stem}.*.json")
    return json.loads(storage.read_bytes(details))["errors"]


def test_an_inbox_manifest_cannot_read_another_bucket(buckets, fake_deployment, requests):
    """The exfiltration: secret images as contents (one named, one by glob), no style."""
    secrets = buckets["secrets"]
    drop(
        buckets["inbox"],
        "loot.yaml",
        f"""version: 1
output: loot
defaults: {{style_weight: 0}}
contents: [{secrets}/private.png, "{secrets}/**/*.jpg", {secrets}/no-such.png]
styles: [paintings/s.png]
""",
    )
    result = watch.watch_inbox(buckets["inbox"])
    assert result["rejected"] == [f"{buckets['inbox']}/loot.yaml"] and result["started"] == []
    assert fake_deployment.calls == []
    assert requests.to(secrets) == []  # not a HEAD, not a listing
    errors = filed_errors(buckets["inbox"], "loot")
    named, globbed, missing = (e for e in errors if "contents[" in e)
    assert f"{secrets}/private.png' lies outside the read roots ({buckets['home']})" in named
    assert "glob" in globbed and f"would list '{secrets}'" in globbed
    # An object outside the roots reads the same whether or not it exists.
    assert named.replace("private.png", "X").replace("contents[0]", "C") == missing.replace(
        "no-such.png", "X"
    ).replace("contents[2]", "C")
    assert storage.list_prefix(f"{buckets['inbox']}/loot") == []


def test_an_inbox_manifest_cannot_write_another_bucket(buckets, fake_deployment, requests):
    teamb = buckets["teamb"]
    drop(
        buckets["inbox"],
        "spill.yaml",
        f"""version: 1
output: {teamb}/outputs/masters
contents: [photos/a.png]
styles: [paintings/s.png]
""",
    )
    result = watch.watch_inbox(buckets["inbox"])
    assert result["rejected"] == [f"{buckets['inbox']}/spill.yaml"]
    assert fake_deployment.calls == [] and requests.to(teamb) == []
    assert storage.list_prefix(teamb) == [f"{teamb}/outputs/keep.txt"]
    (error,) = filed_errors(buckets["inbox"], "spill")
    assert error.endswith(
        f"output: '{teamb}/outputs/masters' lies outside the write roots ({buckets['home']})"
    )


def test_dotdot_cannot_leave_a_teams_prefix_of_a_shared_bucket(buckets, fake_deployment, requests):
    """Team A's inbox in a bucket shared with team B, with roots on team A's prefix."""
    shared = buckets["home"]
    team_a = f"{shared}/teama"
    storage.write_bytes(f"{shared}/teamb/private.png", png_bytes(scene(seed=3)))
    storage.write_bytes(f"{team_a}/photos/a.png", png_bytes(scene(seed=1)))
    storage.write_bytes(f"{team_a}/paintings/s.png", png_bytes(stripes(seed=1)))
    drop(
        f"{team_a}/inbox",
        "climb.yaml",
        """version: 1
output: ../../teamb/out
contents: [../../teamb/private.png, ../photos/a.png]
styles: [../paintings/s.png]
""",
    )
    requests.clear()
    result = watch.watch_inbox(f"{team_a}/inbox", read_roots=[team_a], write_roots=[team_a])
    assert result["rejected"] == [f"{team_a}/inbox/climb.yaml"] and fake_deployment.calls == []
    errors = filed_errors(f"{team_a}/inbox", "climb")
    assert [e.split(": ")[1] for e in errors] == ["output", "contents[0]"]
    assert all("outside the" in e and f"({team_a})" in e for e in errors)
    assert not [r for r in requests.to(shared) if r[2].startswith("teamb/")]

    # The same inbox's good manifest runs, with the roots and its own bytes pinned.
    drop(
        f"{team_a}/inbox",
        "fine.yaml",
        "version: 1\noutput: ../out\ncontents: [../photos/a.png]\nstyles: [../paintings/s.png]\n",
    )
    assert watch.watch_inbox(f"{team_a}/inbox", read_roots=[team_a], write_roots=[team_a])[
        "started"
    ] == [f"{team_a}/inbox/fine.yaml"]
    (parameters,) = fake_deployment.parameters
    assert parameters["read_roots"] == [team_a] and parameters["write_roots"] == [team_a]
    sha = parameters["manifest_sha256"]
    assert sha == jobs.sha256(storage.read_bytes(f"{team_a}/inbox/fine.yaml"))


@pytest.mark.parametrize("output", [".claims", "done/x", "failed", ".", ".."])
def test_the_inbox_and_its_control_folders_are_never_outputs(buckets, fake_deployment, output):
    drop(
        buckets["inbox"],
        "squat.yaml",
        f"version: 1\noutput: {output!r}\ncontents: [photos/a.png]\nstyles: [paintings/s.png]\n",
    )
    assert watch.watch_inbox(buckets["inbox"])["rejected"] == [f"{buckets['inbox']}/squat.yaml"]
    (error,) = filed_errors(buckets["inbox"], "squat")
    assert "which the inbox keeps for itself" in error
    assert fake_deployment.calls == []


GOOD = "version: 1\noutput: out/{name}\ncontents: [photos/a.png]\nstyles: [paintings/s.png]\n"


def test_objects_planted_under_the_inbox_are_skipped_and_good_manifests_still_start(
    buckets, fake_deployment
):
    """What `output: .claims` left behind on the old code, forged claims aimed at another
    bucket, a huge claim and junk in done/: the tick logs them, leaves them, and starts
    the good manifests beside them."""
    box, teamb = buckets["inbox"], buckets["teamb"]
    old = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    planted = {
        f"{box}/.claims/a--s--0123abcd.json": json.dumps({"status": "completed", "key": "k"}),
        f"{box}/.claims/a--s--0123abcd.png": "not json",
        f"{box}/.claims/_runs/r/summary.json": "{}",
        # A stale claim whose release would delete another bucket's object.
        f"{box}/.claims/precious.yaml.json": json.dumps(
            {"manifest": f"{teamb}/precious.yaml", "owner": "x", "claimed_at": old}
        ),
        f"{box}/.claims/huge.yaml.json": json.dumps(
            {"manifest": f"{box}/huge.yaml", "owner": "x", "claimed_at": old, "pad": "x" * 70_000}
        ),
        f"{box}/done/junk.bin": "junk",
    }
    for uri, body in planted.items():
        storage.write_bytes(uri, body.encode())
    storage.write_bytes(f"{teamb}/precious.yaml", b"team b's manifest")
    storage.write_bytes(f"{teamb}/.claims/precious.yaml.json", b"team b's claim")
    # A settled-looking claim on a finished run, naming another bucket's file to file away.
    fake_deployment.outcome["state"] = fake_deployment.Failed
    watch.run_deployment("x", {"manifest": "forged"})
    forged = {
        "manifest": f"{teamb}/outputs/keep.txt",
        "owner": "x",
        "claimed_at": old,
        "flow_run_id": str(fake_deployment.run_ids[-1]),
    }
    storage.write_bytes(f"{box}/.claims/keep.txt.json", json.dumps(forged).encode())
    fake_deployment.outcome["state"] = fake_deployment.Running
    fake_deployment.calls.clear()
    for name in ("one.yaml", "two.yaml"):
        drop(box, name, GOOD)

    result = watch.watch_inbox(box)
    assert result["started"] == [f"{box}/one.yaml", f"{box}/two.yaml"]
    assert fake_deployment.calls == result["started"]
    for uri, body in planted.items():  # left alone
        assert storage.read_bytes(uri) == body.encode()
    assert storage.read_bytes(f"{teamb}/precious.yaml") == b"team b's manifest"
    assert storage.read_bytes(f"{teamb}/.claims/precious.yaml.json") == b"team b's claim"
    assert storage.list_prefix(teamb) == sorted(
        [
            f"{teamb}/.claims/precious.yaml.json",
            f"{teamb}/outputs/keep.txt",
            f"{teamb}/precious.yaml",
        ]
    )
    # The next tick is not stopped either.
    assert watch.watch_inbox(box)["started"] == []


def test_twin_names_filed_in_one_tick_keep_both_records(buckets, fake_deployment):
    """report.yaml and report.yml filed in the same second: two records, none overwritten."""
    box = buckets["inbox"]
    drop(box, "report.yaml", "version: 1\noutput: out\nfrom: yaml\n")
    drop(box, "report.yml", "version: 1\noutput: out\nfrom: yml\n")
    assert sorted(watch.watch_inbox(box)["rejected"]) == [f"{box}/report.yaml", f"{box}/report.yml"]
    records = [json.loads(storage.read_bytes(u)) for u in storage.glob(f"{box}/failed/*.json")]
    assert sorted(r["manifest"] for r in records) == [f"{box}/report.yaml", f"{box}/report.yml"]
    for record in records:  # each record names its own manifest, filed under its own name
        assert storage.read_bytes(record["filed_as"]).endswith(
            f"from: {record['manifest'].rpartition('.')[2]}\n".encode()
        )
    assert len(storage.list_prefix(f"{box}/failed")) == 4


def test_a_weights_file_from_an_inbox_manifest_is_refused(buckets, fake_deployment):
    drop(
        buckets["inbox"],
        "probe.yaml",
        """version: 1
output: out
defaults: {weights: /proc/self/environ}
contents: [photos/a.png]
styles: [paintings/s.png]
pairs:
  - {content: photos/a.png, style: paintings/s.png, params: {weights: /root/.ssh/id_rsa}}
""",
    )
    assert watch.watch_inbox(buckets["inbox"])["rejected"] == [f"{buckets['inbox']}/probe.yaml"]
    errors = filed_errors(buckets["inbox"], "probe")
    assert [e.split(": ")[1] for e in errors] == ["defaults.weights", "pairs[0].params.weights"]
    assert all("may name only the built-in weights (caffe, torchvision)" in e for e in errors)
    assert fake_deployment.calls == []
