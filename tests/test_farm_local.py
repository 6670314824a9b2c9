"""The farm's parts that need no cluster: the local farm (LocalAgent behind the farm API, same job record) and a
device worker driving a phone over adb (tests/fake_adb.py stands in for adb and the phone)."""
from __future__ import annotations

import asyncio
import sys
import zipfile
from pathlib import Path

import fake_adb
import pytest
from agent_bundles import make_bundle, zip_bundle

import sdk
from sdk.agent import bench
from sdk.farm import AdbConnection, FarmJobsFailed
from sdk.farm.device import DeviceWorker

QUICK = {"warmup": 1, "iterations": 5, "idle_s": 0.0, "energy": False}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("farm-local")
    return [make_bundle(out, seed) for seed in range(2)] + [make_bundle(out, 7, name="no-runtime", runtime="nope")]


def test_local_farm_runs_records_and_reports_a_failed_job_without_losing_the_others(bundles, tmp_path):
    farm = sdk.farm.local(store=tmp_path / "jobs.sqlite3")
    with pytest.raises(FarmJobsFailed) as failed:
        farm.run_many(bundles, QUICK)
    good = failed.value.results[:2]
    assert all(r.ran and r.parity.passed and r.farm.device == "local" for r in good)
    assert good[0]["bundle"]["model_sha256"] != good[1]["bundle"]["model_sha256"]
    assert list(failed.value.errors) == [2] and "failed on device local" in str(failed.value.errors[2])
    records = farm.jobs()
    assert sorted(r.status for r in records) == ["done", "done", "failed"]
    assert next(r for r in records if r.status == "failed").bundle == "no-runtime"
    assert [(row.name, row.state, row.jobs_done) for row in farm.devices()] == [("local", "free", 3)]
    with zipfile.ZipFile(tmp_path / "not-a-bundle.zip", "w") as zf:
        zf.writestr("model.onnx", b"")
    with pytest.raises(sdk.core.errors.UserInputError, match="not a bundle"):
        farm.benchmark(tmp_path / "not-a-bundle.zip")
    with pytest.raises(sdk.core.errors.AgentError, match="failed on device local.*drives no phone"):
        farm.benchmark(bundles[0], target="phone", **QUICK)
    farm.close()


def test_a_phone_over_adb_is_a_farm_device(bundles, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_ROOT", str(fake_adb.make_phone(tmp_path / "phone")))
    bench._launcher.close()  # benchmark processes fork from a launcher: restart it so they see FAKE_ADB_ROOT
    runner = fake_adb.write_runner(tmp_path / "executor_runner")
    connection = AdbConnection(fake_adb.SERIAL, str(runner), adb=(sys.executable, fake_adb.__file__),
                               runtimes=("onnxruntime",))
    worker = DeviceWorker("pixel", {"id": "android-arm64", "format": "executorch", "runtime": "executorch"},
                          connection)
    assert worker.labels["connection"] == "adb" and worker.labels["profile"] == "android-arm64"
    payload = zip_bundle(bundles[0], tmp_path / "b.zip").read_bytes()
    result = worker.benchmark(payload, "b", {**QUICK, "target": "phone"})
    assert result["ran_on"].startswith("executor_runner on Pixel 8") and result["parity"]["passed"]
    assert worker.info()["jobs_done"] == 1


def test_a_lease_is_exclusive_and_expires_when_its_client_never_gives_it_back(tmp_path):
    from sdk.farm.tracker import Tracker

    async def scenario() -> list:
        tracker = Tracker(str(tmp_path / "jobs.sqlite3"))
        await tracker.register("d1", {"profile": "p", "host": "h"}, [])
        first = await tracker.acquire({"profile": "p"}, "job-1", 1, "b", [], 0.3)
        waiting = asyncio.ensure_future(tracker.acquire({"profile": "p"}, "job-2", 1, "b", [], 60.0))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # exclusive: job-2 waits while job-1 holds the only device
        second = await asyncio.wait_for(waiting, 5)  # job-1's client never releases: its lease expires
        expired = [(r.job, r.status) for r in tracker.store.records()]
        await tracker.release("d1", "job-1", 1, "done", {"late": True})  # a late answer is kept, but does not
        rows = await tracker.rows()                                        # free the device job-2 now holds
        return [first[0], second[0], expired, rows[0]["job"], [(r.job, r.status) for r in tracker.store.records()]]

    first, second, expired, holder, records = asyncio.run(scenario())
    assert first == second == "d1" and expired == [("job-1", "expired"), ("job-2", "running")]
    assert holder == "job-2" and records == [("job-1", "done"), ("job-2", "running")]


def test_farm_host_needs_exactly_one_connection():
    from typer.testing import CliRunner

    from sdk.cli import app

    runner = CliRunner()
    for extra, message in (([], "exactly one of --adb"), (["--adb", "R5CX", "--local"], "exactly one of --adb"),
                           (["--adb", "R5CX"], "--adb needs --runner"), (["--local", "--label", "x"], "key=value")):
        result = runner.invoke(app, ["farm", "host", "--address", "127.0.0.1:1", "--device", "intel-cpu", *extra])
        assert isinstance(result.exception, sdk.core.errors.UserInputError), result.output
        assert message in str(result.exception)
