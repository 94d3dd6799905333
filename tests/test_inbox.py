"""The inbox: atomic claims under a race, and the watch-inbox flow's bookkeeping."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from imagegen import png_bytes, scene, stripes

from flows import watch
from nst_core.batch import inbox, storage

GOOD = """version: 1
output: out/{name}
defaults: {size: 32, iterations: 2}
contents: [photos/a.png]
styles: [paintings/s.png]
"""


def test_each_manifest_is_claimed_exactly_once_under_a_race(storage_root):
    manifests = [f"{storage_root}/m{i}.yaml" for i in range(5)]
    for uri in manifests:
        storage.write_bytes(uri, b"version: 1\n")
    barrier = threading.Barrier(6)

    def watcher(name: str) -> list[str]:
        barrier.wait()  # every watcher starts claiming at the same moment
        found = inbox.list_manifests(storage_root)
        return [uri for uri in found if inbox.claim_manifest(uri, name)]

    with ThreadPoolExecutor(6) as pool:
        won = list(pool.map(watcher, [f"w{i}" for i in range(6)]))
    claimed = sorted(uri for wins in won for uri in wins)
    assert claimed == sorted(manifests)


def test_only_manifests_directly_under_the_inbox_are_listed(storage_root):
    for name in ("a.yaml", "b.yml", "c.txt", "done/old.yaml", ".claims/a.yaml.json"):
        storage.write_bytes(f"{storage_root}/{name}", b"x")
    assert inbox.list_manifests(storage_root) == [
        f"{storage_root}/a.yaml",
        f"{storage_root}/b.yml",
    ]


@pytest.fixture
def drop_box(tmp_path):
    folder = tmp_path / "inbox"
    storage.write_bytes(f"{folder}/photos/a.png", png_bytes(scene(seed=1)))
    storage.write_bytes(f"{folder}/paintings/s.png", png_bytes(stripes(seed=1)))
    return str(folder)


def test_two_watchers_at_once_start_each_manifest_once(drop_box, fake_deployment):
    fake_deployment.outcome["state"] = fake_deployment.Running
    for name in ("one", "two", "three"):
        storage.write_bytes(f"{drop_box}/{name}.yaml", GOOD.encode())
    barrier = threading.Barrier(2)

    def tick(_):
        barrier.wait()
        return watch.watch_inbox(drop_box)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(tick, range(2)))
    assert sorted(fake_deployment.calls) == sorted(
        f"{drop_box}/{n}.yaml" for n in ("one", "two", "three")
    )
    assert sorted(m for r in results for m in r["started"]) == sorted(fake_deployment.calls)
    # once the batches end, the next tick files them in done/, and starts nothing new
    fake_deployment.finish_all()
    settled = watch.watch_inbox(drop_box)
    assert sorted(settled["settled"]) == sorted(fake_deployment.calls)
    assert len(fake_deployment.calls) == 3
    details = json.loads(storage.read_bytes(storage.glob(f"{drop_box}/done/one.*.json")[0]))
    assert details["state"] == "Completed" and details["flow_run_name"].startswith("batch-")
    assert details["summary"] == f"{drop_box}/out/one/_runs/{details['flow_run_name']}/summary.json"
    assert inbox.list_manifests(drop_box) == []
    assert storage.list_prefix(f"{drop_box}/.claims") == []


def test_a_failed_batch_files_its_manifest_in_failed(drop_box, fake_deployment):
    fake_deployment.outcome["state"] = fake_deployment.Failed
    storage.write_bytes(f"{drop_box}/bad-run.yaml", GOOD.encode())
    watch.watch_inbox(drop_box)
    watch.watch_inbox(drop_box)
    assert storage.glob(f"{drop_box}/failed/bad-run.*.yaml")
    details = json.loads(storage.read_bytes(storage.glob(f"{drop_box}/failed/bad-run.*.json")[0]))
    assert details["state"] == "Failed"


def test_invalid_manifest_goes_to_failed_with_its_errors_and_the_watcher_goes_on(
    drop_box, fake_deployment
):
    storage.write_bytes(f"{drop_box}/broken.yaml", b"version: 1\noutput: out\nbogus: true\n")
    storage.write_bytes(f"{drop_box}/fine.yaml", GOOD.encode())
    result = watch.watch_inbox(drop_box)
    assert result["rejected"] == [f"{drop_box}/broken.yaml"]
    assert result["started"] == [f"{drop_box}/fine.yaml"]
    errors = json.loads(storage.read_bytes(storage.glob(f"{drop_box}/failed/broken.*.json")[0]))
    assert any("bogus: Extra inputs are not permitted" in e for e in errors["errors"])


def test_a_manifest_dropped_while_a_batch_runs_is_picked_up_next_tick(drop_box, fake_deployment):
    fake_deployment.outcome["state"] = fake_deployment.Running
    storage.write_bytes(f"{drop_box}/first.yaml", GOOD.encode())
    watch.watch_inbox(drop_box)
    storage.write_bytes(f"{drop_box}/second.yaml", GOOD.encode())
    result = watch.watch_inbox(drop_box)
    assert result["started"] == [f"{drop_box}/second.yaml"] and result["settled"] == []
    assert fake_deployment.calls == [f"{drop_box}/first.yaml", f"{drop_box}/second.yaml"]


def test_a_tick_of_the_inbox_deployment_cancels_the_ticks_it_missed(drop_box, prefect_server):
    """Ticks that came due while no worker ran wait as Scheduled; the tick that runs first
    cancels those of its inbox (not another inbox's, not future ones) and does their work."""
    from datetime import UTC, datetime, timedelta

    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(watch.watch_inbox)
        deployment = client.create_deployment(flow_id=flow_id, name=f"inbox-{now:%H%M%S%f}")

        def tick(minutes: float, inbox: str = drop_box):
            state = Scheduled(scheduled_time=now + timedelta(minutes=minutes))
            return client.create_flow_run_from_deployment(
                deployment, parameters={"inbox": inbox}, state=state
            )

        missed = [tick(-3), tick(-2), tick(-1)]
        other_inbox, future = tick(-1, f"{drop_box}-other"), tick(5)
        me = tick(0)
        state = run_flow(
            watch.watch_inbox, flow_run=me, parameters={"inbox": drop_box}, return_type="state"
        )
        assert state.is_completed(), state
        after = {r.id: r.state for r in client.read_flow_runs() if r.deployment_id == deployment}
    assert all(after[r.id].is_cancelled() for r in missed)
    assert after[missed[0].id].message == f"{watch.MISSED_TICK} {me.name}"
    assert after[other_inbox.id].is_scheduled() and after[future.id].is_scheduled()
