"""LLM export and generation end to end with a tiny config-defined Llama (random weights, fixed seed):
ExecuTorch (android), OpenVINO (intel-cpu) and ONNX Runtime (jetson stand-in) export with int4 weights and
generate through LocalAgent and a real agent over HTTP; Core ML converts and passes its spec check; LiteRT
is refused with its reason. One export per target (module-scoped)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from agent_bundles import AgentProcess
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

import sdk
from converters.llm.static_cache import StaticCacheDecoder
from sdk.agent import Client, LocalAgent
from sdk.cli import app
from sdk.core.errors import (
    InvalidInputsError,
    UnsupportedError,
    UnsupportedRecipeError,
    UserInputError,
)

VOCAB, MAX_SEQ = 128, 48
HOST_TARGETS = ["android", "intel-cpu", "jetson"]


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def texts() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(3, VOCAB, size=20) for _ in range(5)]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("llm")


@pytest.fixture(scope="module", params=HOST_TARGETS)
def exported(request, llama, texts, out) -> sdk.ExportResult:
    return sdk.export(llama, request.param, task="text-generation", recipe=["int4:32"], calibration=texts,
                      max_seq_len=MAX_SEQ, output_dir=out)


def test_static_cache_decoder_matches_the_hf_model(llama):
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = llama(ids).logits[0]
        decoder = StaticCacheDecoder(llama, MAX_SEQ).eval()
        k = v = torch.zeros(decoder.shape.cache_shape())
        prefill, k, v = decoder(ids[:, :9], torch.tensor([0]), k, v)
        for pos in range(9, 12):  # then one token at a time through the cache
            step, k, v = decoder(ids[:, pos:pos + 1], torch.tensor([pos]), k, v)
    torch.testing.assert_close(prefill[0], ref[8], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step[0], ref[11], atol=1e-5, rtol=1e-5)


def test_export_report_and_quality(exported):
    report, manifest = exported.report, exported.artifact.manifest
    assert manifest["task"] == "text-generation"
    assert manifest["llm"] | {"eos_ids": [2]} == {"n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16,
                                                  "vocab_size": VOCAB, "max_seq_len": MAX_SEQ, "eos_ids": [2],
                                                  "bos_id": 1}
    q = report["quantization"]
    assert q["scheme"].startswith("int4") and q["toolchain"] == report["toolchain"]
    # how activations run, as the one typed literal every converter uses (not each toolchain's prose)
    assert q["activations"] == {"android-arm64": "int8-dynamic", "intel-cpu": "float32",
                                "jetson-orin-nano": "int8-dynamic"}[exported.artifact.device]
    assert report["artifact"]["size_vs_fp32_params"] < 1.0
    llm = report["llm"]
    assert llm["ran"], llm
    q = llm["quality"]
    assert np.isfinite(q["perplexity_artifact"]) and abs(q["perplexity_change"]) < 0.1, q
    assert q["top1_agreement"] >= 0.5, q  # int4 of a random 2-layer model; fp32 would agree everywhere
    assert [p["prompt_len"] for p in llm["prompts"]] == [8, 16]
    for p in llm["prompts"]:
        assert p["new_tokens"] == 32 and p["ttft_ms"] > 0 and p["token_latency_ms"]["n"] == 31
    assert llm["energy_per_token_mj"] is not None or llm["energy_reason"]
    assert json.loads((exported.artifact.path / "report.json").read_text())["llm"]["quality"] == q


def test_generate_greedy_sampling_and_stop_tokens(exported):
    agent, prompt = LocalAgent(), [5, 17, 33, 9]
    greedy = agent.generate(exported.artifact, prompt, max_new_tokens=10)
    assert greedy.stop_reason in ("max_new_tokens", "eos") and 1 <= len(greedy.tokens) <= 10
    assert all(0 <= t < VOCAB for t in greedy.tokens)
    assert agent.generate(exported.artifact, prompt, max_new_tokens=10).tokens == greedy.tokens
    stopped = agent.generate(exported.artifact, prompt, max_new_tokens=10, stop_tokens=[greedy.tokens[0]])
    assert stopped.tokens == greedy.tokens[:1] and stopped.stop_reason == "eos"
    sample = [agent.generate(exported.artifact, prompt, max_new_tokens=12, temperature=1.5, seed=s,
                             stop_tokens=[]).tokens for s in (7, 7, 8)]
    assert sample[0] == sample[1] != sample[2]
    assert greedy.timing.prompt_len == 4 and greedy.load_s > 0 and greedy.peak_rss_mb > 0


def test_generate_refuses_bad_prompts(exported):
    agent = LocalAgent()
    with pytest.raises(UserInputError, match=r"\[0, 128\)"):
        agent.generate(exported.artifact, [5, VOCAB], max_new_tokens=4)
    with pytest.raises(UserInputError, match="does not fit the bundle's KV cache of 48"):
        agent.generate(exported.artifact, list(range(3, 3 + MAX_SEQ)), max_new_tokens=4)


def test_generate_over_http_matches_local(exported, tmp_path_factory):
    if exported.artifact.device != "jetson-orin-nano":
        pytest.skip("one HTTP round trip is enough (ONNX Runtime bundle)")
    proc = AgentProcess(tmp_path_factory.mktemp("agent") / "data", max_upload_mb=8).start()
    try:
        with Client(proc.url) as client:
            remote = client.generate(exported.artifact, [5, 17, 33, 9], max_new_tokens=6)
            with pytest.raises(sdk.core.errors.AgentError, match="422"):
                client.generate(exported.artifact, [VOCAB + 1], max_new_tokens=2)
    finally:
        proc.stop()
    assert remote.tokens == LocalAgent().generate(exported.artifact, [5, 17, 33, 9], max_new_tokens=6).tokens
    assert "onnxruntime" in remote.ran_on


def test_cli_bench(exported):
    if exported.artifact.device != "intel-cpu":
        pytest.skip("the CLI once is enough")
    result = CliRunner().invoke(app, ["bench", str(exported.artifact.path), "--prompt-len", "4,8", "--new-tokens",
                                      "5", "--json"])
    assert result.exit_code == 0, result.output
    runs = json.loads(result.output)[0]
    assert [p["prompt_len"] for p in runs["prompts"]] == [4, 8] and runs["prompts"][0]["new_tokens"] == 5


def test_coreml_converts_stateful_int4(llama, texts, out):
    import coremltools as ct

    from converters.llm.coreml import check_spec

    res = sdk.export(llama, "apple-mac-ane", task="text-generation", recipe=["int4:32"], calibration=texts,
                     max_seq_len=MAX_SEQ, output_dir=out)
    assert res.report["llm"]["ran"] is False and "coreml" in res.report["llm"]["reason"]
    spec = ct.models.MLModel(str(res.artifact.model_path), skip_model_load=True).get_spec()
    checked = check_spec(spec, int4=True)
    assert checked["states"] == ["k_cache", "v_cache"] and checked["spec_version"] >= 9
    assert checked["int4_weight_ops"] >= 2 * 4  # q/k/v/o (at least) in both layers


def test_refusals(llama, texts, out):
    with pytest.raises(UnsupportedError, match="litert-torch's generative API"):
        sdk.export(llama, "android-litert", task="text-generation", calibration=texts, max_seq_len=MAX_SEQ,
                   output_dir=out)
    with pytest.raises(UnsupportedRecipeError, match="int8"):
        sdk.export(llama, "jetson", task="text-generation", recipe=["int8"], max_seq_len=MAX_SEQ, output_dir=out)
    with pytest.raises(InvalidInputsError, match="causal LM"):
        sdk.export(torch.nn.Linear(2, 2), "jetson", task="text-generation", output_dir=out)
    with pytest.raises(InvalidInputsError, match="max_position_embeddings"):
        sdk.export(llama, "jetson", task="text-generation", max_seq_len=4096, output_dir=out)
    with pytest.raises(InvalidInputsError, match="tokenizer"):
        sdk.export(llama, "jetson", task="text-generation", calibration=["some text"], max_seq_len=MAX_SEQ,
                   output_dir=out)
    with pytest.raises(InvalidInputsError, match="unknown task"):
        sdk.export(llama, "jetson", task="summarize", output_dir=out)
    assert not list(out.glob(".*partial*"))


def test_energy_per_token_through_a_power_probe(exported, tmp_path):
    """A Jetson INA3221 tree (tests/fixtures/power) at constant current: the probe works, and since the loop draws
    no more than idle, energy per token is None with the probe's reason rather than a number made of noise."""
    import shutil
    from pathlib import Path

    from sdk.agent import generate
    from sdk.agent.power import JetsonProbe

    if exported.artifact.device != "jetson-orin-nano":
        pytest.skip("the energy plumbing once is enough")
    root = tmp_path / "jetson"
    shutil.copytree(Path(__file__).parent / "fixtures" / "power" / "jetson-orin-nano", root, symlinks=True)
    result = generate.benchmark(exported.artifact.path, prompt_lens=(8,), new_tokens=8, idle_s=0.2,
                                probes=[JetsonProbe(root)])
    assert result.energy["probe"] == "jetson-ina3221" and result.energy["iterations"] == 8
    assert result.energy_per_token_mj is None and "not above idle" in result.energy_reason


def test_fp32_artifact_reproduces_the_torch_model_exactly(llama, texts, out):
    """Without quantization the cache loop must give the fp32 model's log-probabilities (perplexity equal to 1e-5)
    and its tokens, up to near-ties of a random model's flat logits (ONNX Runtime, the quickest export)."""
    res = sdk.export(llama, "jetson", task="text-generation", recipe=["fp32"], calibration=texts,
                     max_seq_len=MAX_SEQ, output_dir=out / "fp32")
    q = res.report["llm"]["quality"]
    assert q["top1_agreement"] >= 0.95 and q["greedy_prefix_agreement"] >= 0.5, q
    assert abs(q["perplexity_change"]) < 1e-5, q
