"""The agent under attack, over real HTTP on 127.0.0.1: every defect an audit found is a case here, then a
bounded hypothesis fuzz of uploads and specs and a bounded schemathesis run against the served OpenAPI
document. The bar: no 5xx, a reason in every refusal, no agent path in any message, the agent keeps serving."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from agent_bundles import AgentProcess, make_bundle, zip_bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdk.agent import Client

TOKEN = "hostile-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUICK = {"warmup": 0, "iterations": 2, "idle_s": 0, "energy": False, "timeout_s": 60}
FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    proc = AgentProcess(tmp_path_factory.mktemp("hostile") / "data", token=TOKEN, max_upload_mb=2).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(agent):
    with Client(agent.url, TOKEN) as c:
        yield c


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("good"), 0)


@pytest.fixture(scope="module")
def entries(bundle) -> dict[str, bytes]:
    return {p.relative_to(bundle).as_posix(): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _with_manifest(entries: dict[str, bytes], manifest: object) -> bytes:
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    return _zip({**entries, "manifest.json": raw})


def _edit(entries: dict[str, bytes], edit) -> dict:
    manifest = json.loads(entries["manifest.json"])
    edit(manifest)
    return manifest


def post(agent, payload: bytes, spec: str | None = None) -> httpx.Response:
    return httpx.post(agent.url + "/v1/jobs", headers=AUTH, timeout=30,
                      files={"bundle": ("b.zip", payload, "application/zip")},
                      data={"spec": json.dumps(QUICK) if spec is None else spec})


def assert_refused(agent, r: httpx.Response, status: int | None = None, words: str = "") -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    if status is not None:
        assert r.status_code == status, r.text[:500]
    detail = r.json()["detail"]
    assert words.lower() in detail.lower(), detail
    assert str(agent.data_dir) not in detail and "/jobs/" not in detail, detail  # no agent path leaks


def object_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


def cases(entries: dict[str, bytes]) -> dict[str, tuple[bytes, int, str]]:
    def wrong(field, value):
        return _with_manifest(entries, _edit(entries, lambda m: m.__setitem__(field, value)))

    no_sha = _edit(entries, lambda m: m["files"][0].pop("sha256"))
    return {
        "300-character folder name": (_zip({**entries, "d" * 300 + "/x.txt": b"x"}), 400, "longer than"),
        "'a' and 'a/b'": (_zip({**entries, "a": b"x", "a/b": b"y"}), 400, "both a file and a folder"),
        "manifest not UTF-8": (_with_manifest(entries, b'{"device": "\xff\xfe"}'), 422, "not UTF-8"),
        "manifest is 5": (_with_manifest(entries, 5), 422, "must be a JSON object"),
        "manifest nested 100k deep": (_with_manifest(entries, b"[" * 100_000 + b"]" * 100_000), 422, "manifest.json"),
        "files: 5": (wrong("files", 5), 422, "files"),
        "file without sha256": (_with_manifest(entries, no_sha), 422, "sha256"),
        "model_file: 42": (wrong("model_file", 42), 422, "model_file"),
        "inputs: null": (wrong("inputs", None), 422, "inputs"),
        "outputs: [5]": (wrong("outputs", [5]), 422, "outputs"),
        "shape of strings": (wrong("inputs", [{"name": "in_0", "shape": ["a"], "dtype": "float32"}]), 422, "shape"),
        "runtime: []": (wrong("runtime", []), 422, "runtime"),
        "tolerance: 'loose'": (wrong("tolerance", "loose"), 422, "tolerance"),
        "report.json not JSON": (_zip({**entries, "report.json": b"{not json"}), 422, "report.json"),
        "report.json a list": (_zip({**entries, "report.json": b"[1]"}), 422, "report.json"),
        "object .npy": (_zip({**entries, "weights.npy": object_npy()}), 415, "objects"),
    }


def test_every_audited_defect_is_a_4xx_with_its_reason(agent, client, entries, bundle):
    for case, (payload, status, words) in cases(entries).items():
        r = post(agent, payload)
        assert r.status_code == status, (case, r.status_code, r.text[:300])
        assert_refused(agent, r, status, words)
    zipped = zip_bundle(bundle).read_bytes()
    assert_refused(agent, post(agent, zipped, spec="[" * 200_000 + "]" * 200_000), 413, "at most")
    assert_refused(agent, post(agent, zipped, spec="[" * 30_000 + "]" * 30_000), 400, "nested too deeply")
    assert client.device()["queue"]["queued"] == 0 and not any((agent.data_dir / "jobs").iterdir())
    assert client.wait(client.submit(bundle, **QUICK), timeout=60)["status"] == "done"  # still serving


def test_bit_flipped_deflate_data_is_a_400(agent, entries):
    packed = bytearray(_zip(entries, zipfile.ZIP_DEFLATED))
    start = packed.index(b"model.onnx") + len("model.onnx")  # inside the model's compressed data
    rng = np.random.default_rng(7)
    for pos in rng.integers(start, start + 200, size=12):
        flipped = bytearray(packed)
        flipped[pos] ^= 0xFF
        r = post(agent, bytes(flipped))
        assert r.status_code < 500, r.text[:300]
        if r.status_code != 202:
            assert_refused(agent, r)


def test_nan_bundle_fails_parity_through_the_agent(client, tmp_path):
    job = client.wait(client.submit(make_bundle(tmp_path, 4, "nan", nan=True), **QUICK), timeout=60)
    assert job["status"] == "done" and job["result"]["parity"]["passed"] is False
    assert "NaN" in job["result"]["parity"]["failures"][0]


def test_export_validated_on_the_agent_refuses_a_nan_model(agent, tmp_path, monkeypatch):
    import torch
    from test_parity_nan import LogOfShifted

    import sdk
    from sdk.errors import ParityError

    monkeypatch.setenv("EDGE_SDK_AGENT_TOKEN", TOKEN)
    with pytest.raises(ParityError, match="NaN"):
        sdk.export(LogOfShifted().eval(), "intel-cpu", (torch.randn(1, 8),), output_dir=tmp_path, validate=agent.url)
    assert not (tmp_path / "intel-cpu").exists()


def test_failed_job_error_names_no_agent_path(agent, client, tmp_path):
    crash = make_bundle(tmp_path, 7, "crash", runtime="test-crash")
    job = client.wait(client.submit(crash, **QUICK), timeout=60)
    assert job["status"] == "failed" and str(agent.data_dir) not in job["error"] and "/jobs/" not in job["error"]


@FUZZ
@given(data=st.data())
def test_fuzzed_uploads_never_5xx(agent, entries, data):
    packed = bytearray(_zip(entries, zipfile.ZIP_DEFLATED))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(packed) - 1), st.integers(1, 255)), min_size=1, max_size=4))
    for pos, mask in flips:
        packed[pos] ^= mask
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(packed))))
    r = post(agent, bytes(packed[:cut]))
    assert r.status_code < 500, r.text[:300]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
SPEC_KEYS = ["warmup", "iterations", "tolerance", "timeout_s", "idle_s", "energy", "check_bad_input", "target",
             "min_duration_s", "max_duration_s", "target_ci_pct"]


@FUZZ
@given(spec=st.one_of(JSON, st.dictionaries(st.sampled_from(SPEC_KEYS), JSON, max_size=5), st.text(max_size=40)))
def test_fuzzed_specs_never_5xx(agent, entries, spec):
    unknown_runtime = _with_manifest(entries, _edit(entries, lambda m: m.update(runtime="tvm")))  # never queues a job
    r = post(agent, unknown_runtime, spec=spec if isinstance(spec, str) else json.dumps(spec))
    assert 400 <= r.status_code < 500, r.text[:300]


def test_schemathesis_against_the_served_openapi(agent, client):
    import schemathesis

    schema = schemathesis.openapi.from_url(agent.url + "/openapi.json", headers=AUTH)
    assert {op.ok().label for op in schema.get_all_operations()} >= {"GET /v1/device", "POST /v1/jobs", "GET /v1/jobs/{job_id}"}
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call(base_url=agent.url, headers=AUTH)
            assert response.status_code < 500, (case.method, case.path, response.text[:300])

        check()
    assert client.device()["runtimes"]["onnxruntime"]["available"]  # still up
