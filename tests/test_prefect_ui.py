"""What a team sees of a batch in Prefect: the run form's parameters, the artifacts a run
publishes, and the events an automation can act on (read back from a real server)."""

import json
import re
import time
from pathlib import Path

import pytest
from imagegen import TINY_MANIFEST, png_bytes, scene, stripes, write_batch
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

from flows import artifacts, events
from flows.batch import stylize_batch
from flows.parameters import StyleOverrides, overrides
from flows.shards import stylize_shard
from nst_core.batch import storage
from nst_core.batch.escape import markdown_text
from nst_core.engine.params import StyleParams

EVENT_WAIT_S = 120
SHARD_INTERNALS = {"only_jobs", "shard_name", "done_after", "job_keys"}


def form(flow) -> dict:
    """The parameter schema Prefect stores with a deployment of `flow`: the UI's run form."""
    return parameter_schema(flow).model_dump_for_openapi()


# --------------------------------------------------------------------------- the run form


def test_every_batch_parameter_has_a_description_and_no_shard_internal_is_one():
    schema = form(stylize_batch)
    properties = schema["properties"]
    assert set(properties) == {
        "manifest",
        "params",
        "force",
        "dry_run",
        "task_runner",
        "shards",
        "shard_timeout_s",
        "shard_deployment",
        "read_roots",
        "write_roots",
        "manifest_sha256",
    }
    undocumented = [name for name, spec in properties.items() if not spec.get("description")]
    assert undocumented == []
    assert "The inbox sets them" in properties["read_roots"]["description"]
    assert properties["task_runner"]["anyOf"][0]["enum"] == ["thread", "ray"]
    assert properties["shards"]["minimum"] == 1


def test_params_is_every_style_parameter_optional_and_described_as_the_engine_says():
    schema = form(stylize_batch)
    assert {"$ref": "#/definitions/StyleOverrides"} in schema["properties"]["params"]["anyOf"]
    fields = schema["definitions"]["StyleOverrides"]["properties"]
    assert set(fields) == set(StyleParams.model_fields)
    assert all(spec.get("description") for spec in fields.values()), fields
    assert all(spec["default"] is None for spec in fields.values())
    assert fields["iterations"]["description"] == StyleParams.model_fields["iterations"].description
    (bounded,) = [branch for branch in fields["iterations"]["anyOf"] if "minimum" in branch]
    assert (bounded["minimum"], bounded["maximum"]) == (1, 100_000)
    assert schema["definitions"]["StyleOverrides"]["additionalProperties"] is False


def test_the_shard_flow_takes_what_its_parent_passes_each_parameter_described():
    schema = form(stylize_shard)
    assert set(schema["required"]) == {"manifest", "manifest_sha256", "job_keys", "shard_name"}
    assert all(spec.get("description") for spec in schema["properties"].values())
    assert not SHARD_INTERNALS & set(form(stylize_batch)["properties"])


def test_overrides_pass_on_what_a_run_set_and_nothing_else():
    assert overrides(None) is None and overrides({}) is None
    assert overrides({"iterations": 50}) == {"iterations": 50}  # the JSON runs pass today
    assert overrides(StyleOverrides(style_layers=("relu1_1",))) == {"style_layers": ["relu1_1"]}
    # null asks for `size` alone; for a field that cannot be null it can only mean "not set"
    assert overrides({"scales": None, "size": None, "strength": 0.2}) == {
        "scales": None,
        "strength": 0.2,
    }
    for bad in ({"iterations": 0}, {"colour": "red"}, {"content_weight": float("inf")}):
        with pytest.raises(ValidationError):
            overrides(bad)


# --------------------------------------------------------------------------- artifacts


@pytest.mark.parametrize(
    "name", ["masters", "Tubingen_Masters.v2", "team-a", "Team-A", "x" * 100, "...", "ünï cödé"]
)
def test_artifact_keys_are_per_manifest_in_prefects_alphabet(name):
    key = artifacts.artifact_key(name, "jobs")
    assert re.fullmatch(r"nst-[a-z0-9]+(-[a-z0-9]+)*-jobs", key), key
    assert len(key) <= len("nst--jobs") + artifacts.MAX_NAME_CHARS + 7


def test_artifact_keys_of_different_manifest_names_differ():
    assert artifacts.artifact_key("masters", "jobs") == "nst-masters-jobs"
    names = ["team-a", "Team-A", "team_a", "team.a", "a" * 60, "a" * 61]
    assert len({artifacts.artifact_key(n, "report") for n in names}) == len(names)


def test_losses_are_rounded_to_four_significant_digits_for_people():
    assert artifacts.rounded(0.04068025201559067) == 0.04068
    assert artifacts.rounded(1234567.0) == 1235000.0 and artifacts.rounded(None) is None


@pytest.fixture(scope="module")
def finished_batch(tmp_path_factory, prefect_server):
    """A 2x2 batch named `Masters.v2`, one of whose contents is corrupt: 2 jobs completed
    and 2 failed. Its flow run's id, summary file and manifest URI."""
    root = tmp_path_factory.mktemp("finished")
    uri = write_batch(str(root), TINY_MANIFEST.replace("name: tiny", "name: Masters.v2"))
    (root / "photos" / "b.png").write_bytes(png_bytes(scene(seed=2))[:200])
    state = stylize_batch(uri, return_state=True)
    assert state.is_failed(), state
    (summary,) = storage.glob(f"{root}/out/_runs/*/summary.json")
    return state.state_details.flow_run_id, summary, uri


def artifacts_of(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key}


def test_a_batch_publishes_its_table_report_and_links_under_its_manifests_keys(finished_batch):
    flow_run_id, summary_uri, _ = finished_batch
    published = artifacts_of(flow_run_id)
    key = artifacts.artifact_key("Masters.v2", "")
    assert sorted(published) == sorted(
        f"{key}{what}" for what in ("jobs", "report", "gallery", "contact-sheet")
    )
    summary = json.loads(storage.read_bytes(summary_uri))
    losses = {e["label"]: e["losses"] for e in summary["jobs"] if e["status"] == "completed"}
    table = published[f"{key}jobs"].data
    rows = table if isinstance(table, list) else json.loads(table)
    completed = [row for row in rows if row["status"] == "completed"]
    assert len(completed) == 2 and len(rows) == 4
    for row in completed:
        label = row["job"].replace("\\", "")  # the table shows names Markdown-escaped
        for column, loss in (("style loss", "style"), ("content loss", "content")):
            assert row[column] == float(f"{losses[label][loss]:.4g}")


def test_the_gallery_and_contact_sheet_links_lead_to_the_written_files(finished_batch):
    flow_run_id, summary_uri, _ = finished_batch
    published = artifacts_of(flow_run_id)
    key = artifacts.artifact_key("Masters.v2", "")
    folder = Path(summary_uri).parent
    for what, name in (("gallery", "index.html"), ("contact-sheet", "contact_sheet.jpg")):
        link = published[f"{key}{what}"].data
        # the path as text, Markdown-escaped (`_runs` shows as `\_runs`), and as a file URL
        assert link == f"[{markdown_text(folder / name)}]({(folder / name).as_uri()})", link
        assert (folder / name).is_file()
    assert "nst gallery" in published[f"{key}gallery"].description
    assert "presigned" not in str(published) and "X-Amz" not in str(published)


# --------------------------------------------------------------------------- events


def events_about(name: str, resource_id: str) -> list:
    """The events named `name` about `resource_id` on the server, once there are some: a
    process sends its events in the background, and the server stores them in batches."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    deadline = time.monotonic() + EVENT_WAIT_S
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=[name]),
                    resource=EventResourceFilter(id=[resource_id]),
                ),
                limit=50,
            )
            if page.events or time.monotonic() > deadline:
                return page.events
            time.sleep(0.5)


def test_a_finished_batch_emits_its_counts_failed_jobs_and_where_its_summary_is(
    finished_batch,
):
    flow_run_id, summary_uri, uri = finished_batch
    (event,) = events_about("nst.batch.finished", f"nst.manifest.{uri}")
    assert event.resource.name == "Masters.v2"
    assert event.resource["nst.outcome"] == "failed"
    summary = json.loads(storage.read_bytes(summary_uri))
    payload = event.payload
    assert payload["counts"] == {
        "jobs": 4,
        "completed": 2,
        "failed": 2,
        "skipped": 0,
        "elsewhere": 0,
    }
    failed = [e["label"] for e in summary["jobs"] if e["status"] == "failed"]
    assert payload["failed_jobs"] == failed and payload["failed_jobs_not_listed"] == 0
    assert payload["summary"] == summary_uri and payload["run"] == summary["run"]
    assert payload["gallery"] == str(Path(summary_uri).parent / "index.html")
    # Prefect relates it to the flow run that emitted it.
    assert f"prefect.flow-run.{flow_run_id}" in {r.id for r in event.related}


BROKEN = b"version: 1\noutput: out\nbogus: true\n"


def test_a_manifest_the_inbox_rejects_emits_an_event_naming_it_and_its_first_problem(
    tmp_path, fake_deployment
):
    from flows import watch

    inbox = str(tmp_path / "inbox")
    storage.write_bytes(f"{inbox}/photos/a.png", png_bytes(scene(seed=1)))
    storage.write_bytes(f"{inbox}/paintings/s.png", png_bytes(stripes(seed=1)))
    storage.write_bytes(f"{inbox}/broken.yaml", BROKEN)
    result = watch.watch_inbox(inbox)
    assert result["rejected"] == [f"{inbox}/broken.yaml"]

    (event,) = events_about(events.MANIFEST_REJECTED, f"nst.manifest.{inbox}/broken.yaml")
    assert event.event == "nst.inbox.manifest.rejected"
    assert event.resource.name == "broken.yaml"
    (filed,) = storage.glob(f"{inbox}/failed/broken.*.yaml")
    problems = json.loads(storage.read_bytes(f"{filed}.json"))["errors"]
    assert any("bogus: Extra inputs are not permitted" in p for p in problems)
    assert event.payload["problems"] == len(problems)
    assert event.payload["first_problem"] == problems[0]
    assert event.payload["filed_as"] == filed
    assert fake_deployment.calls == []  # nothing was started for it


def test_nst_run_passes_a_runner_in_any_case_as_the_flows_typed_parameter_takes_it(
    tmp_path, prefect_server, capsys
):
    """The flow's task_runner is `thread` or `ray`; `nst run` accepts `Thread` as it always
    did (NST_TASK_RUNNER too), and hands the flow the lowercase name."""
    from cli_runner import run_cli

    uri = write_batch(str(tmp_path), TINY_MANIFEST)
    code, out, err = run_cli(["run", uri, "--task-runner", "Thread", "-p", "iterations=2"], capsys)
    assert code == 0, err
    assert "4 completed, 0 failed, 0 skipped" in out
