"""Capacity planning against published figures (each cited in docs/plan.md) and
against real model files written in the test with the `safetensors` and `gguf`
packages."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

from ai_bottleneck.modelinfo import (
    ModelError,
    derive_parameters,
    from_parameters,
    load_model,
    parse_parameters,
    read_architecture,
)
from ai_bottleneck.plan import GIB, Gpu, Link, Load, make_plan, saturation, transfer_seconds
from ai_bottleneck.plan_host import host_gpus
from tests.fakes.fake_nvml import FakeNvml, make_gpus

# Published config.json of meta-llama/Llama-3.1-8B (the fields planning reads).
LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
# Published config.json of meta-llama/Llama-2-7b-hf.
LLAMA_2_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
    "tie_word_embeddings": False, "torch_dtype": "float16",
}
GB8 = 8 * 10**9  # an "8 GB" card, the smaller reading of the figure


def hf_folder(tmp_path: Path, config: dict[str, Any]) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# --- published figures ------------------------------------------------------------

def test_llama_31_8b_bf16_kv_cache_is_128_kib_per_token(tmp_path: Path) -> None:
    model = load_model(hf_folder(tmp_path, LLAMA_31_8B))
    assert model.kv_cache_bytes_per_token == 128 * 1024
    assert model.weight_format == "bf16"
    # The model card's 8.03B, derived from the architecture alone.
    assert round(model.parameters / 1e9, 2) == 8.03
    plan = make_plan(model, Load(context_tokens=8192, concurrency=4), None, Link())
    assert plan.kv_cache_bytes == 128 * 1024 * 8192 * 4
    # The full 128K context of one sequence: about 17.2 GB of KV cache.
    full = make_plan(model, Load(context_tokens=131072), None, Link())
    assert full.kv_cache_bytes is not None and round(full.kv_cache_bytes / 1e9, 1) == 17.2


def test_what_could_not_be_checked_is_not_a_fit() -> None:
    model = from_parameters(7 * 10**9, "int4")
    plan = make_plan(model, Load(payload_bytes=1e6, latency_seconds=1.0), None, Link())
    assert plan.unchecked == ["vram", "bandwidth"] and not plan.fits
    assert plan.to_json()["unchecked"] == ["vram", "bandwidth"]


def test_7b_fp16_weights_are_about_14_gb() -> None:
    plan = make_plan(from_parameters(parse_parameters("7B"), "fp16"), Load(), None, Link())
    assert plan.weights_bytes == 14 * 10**9


def test_llama_2_7b_at_4_bit_fits_8_gb_for_short_contexts(tmp_path: Path) -> None:
    model = load_model(hf_folder(tmp_path, LLAMA_2_7B)).with_dtype("int4")
    eight = [Gpu("8 GB card", GB8)]
    for context in (512, 2048, 4096):
        plan = make_plan(model, Load(context_tokens=context), eight, Link())
        assert plan.vram_fits, (context, plan.evidence)
        assert plan.fits
    # Not for long contexts, and not in fp16 at all (the article's point).
    long = make_plan(model, Load(context_tokens=16384), eight, Link())
    assert long.vram_fits is False
    fp16 = make_plan(model.with_dtype("fp16"), Load(context_tokens=2048), eight, Link())
    assert fp16.vram_fits is False
    assert fp16.vram_needed_bytes is not None and fp16.vram_needed_bytes > 13 * 10**9


def test_5_mb_upload_takes_40_s_at_1_mbit_and_0_4_s_at_100_mbit() -> None:
    assert transfer_seconds(5e6, 1e6) == pytest.approx(40.0)
    assert transfer_seconds(5e6, 100e6) == pytest.approx(0.4)
    slow = make_plan(None, Load(payload_bytes=5e6, latency_seconds=1.0), None,
                     Link(nic_bits_per_second=1e6, nic_source="test"))
    assert slow.bandwidth_fits is False and not slow.fits
    assert any("takes 40 s" in e for e in slow.evidence), slow.evidence
    fast = make_plan(None, Load(payload_bytes=5e6, latency_seconds=1.0), None,
                     Link(nic_bits_per_second=100e6, nic_source="test"))
    assert fast.bandwidth_fits is True and fast.bandwidth_needed_bits_per_second == 40e6
    assert any("takes 0.4 s" in e for e in fast.evidence), fast.evidence


# --- arithmetic and changes -------------------------------------------------------

def test_grouped_query_attention_shrinks_the_kv_cache(tmp_path: Path) -> None:
    (tmp_path / "mha").mkdir()
    mha = load_model(hf_folder(tmp_path / "mha", {**LLAMA_31_8B, "num_key_value_heads": 32}))
    gqa = load_model(hf_folder(tmp_path, LLAMA_31_8B))
    assert mha.kv_cache_bytes_per_token == 4 * gqa.kv_cache_bytes_per_token == 512 * 1024


def test_concurrent_sequences_that_fit_follow_the_memory_left() -> None:
    model = from_parameters(7 * 10**9, "int4")
    gpu = [Gpu("x", 40 * GIB)]
    plan = make_plan(model, Load(context_tokens=4096), gpu, Link())
    spare = 40 * GIB - model.weights_bytes - (plan.overhead_bytes or 0)
    assert plan.max_concurrent_sequences == spare // (model.kv_cache_bytes_per_token * 4096)
    crowded = make_plan(model, Load(context_tokens=4096,
                                    concurrency=(plan.max_concurrent_sequences or 0) + 1),
                        gpu, Link())
    assert crowded.vram_fits is False


def test_changes_that_do_not_fit_come_with_numbers_that_do(tmp_path: Path) -> None:
    model = load_model(hf_folder(tmp_path, LLAMA_31_8B))
    gpus = [Gpu("24 GB card", 24 * 10**9)]
    load = Load(context_tokens=32768, concurrency=4)
    plan = make_plan(model, load, gpus, Link())
    assert plan.vram_fits is False
    kinds = [c["kind"] for c in plan.changes]
    assert kinds[0] == "kv_cache_fp8" or kinds[0] == "shorter_context"
    assert kinds[-1] == "more_vram"
    by_kind = {c["kind"]: c for c in plan.changes}
    shorter = Load(context_tokens=by_kind["shorter_context"]["context_tokens"], concurrency=4)
    assert make_plan(model, shorter, gpus, Link()).vram_fits
    fewer = Load(context_tokens=32768, concurrency=by_kind["fewer_concurrent"]["concurrency"])
    assert make_plan(model, fewer, gpus, Link()).vram_fits
    if "quantise" in by_kind:
        quantised = model.with_dtype(by_kind["quantise"]["dtype"])
        assert make_plan(quantised, load, gpus, Link()).vram_fits
    assert plan.to_json()["cheapest_change"] == plan.changes[0]


def test_a_thin_link_suggests_fewer_transfers_or_a_wider_link() -> None:
    load = Load(concurrency=10, payload_bytes=5e6, latency_seconds=2.0)
    plan = make_plan(None, load, None, Link(nic_bits_per_second=5e6, nic_source="t"))
    assert plan.bandwidth_needed_bits_per_second == pytest.approx(200e6)
    by_kind = {c["kind"]: c for c in plan.changes}
    assert by_kind["wider_link"]["bandwidth_needed_bits_per_second"] == pytest.approx(200e6)
    assert by_kind["longer_latency"]["latency_seconds"] == pytest.approx(80.0)
    assert "fewer_concurrent" not in by_kind  # not even one 5 MB upload crosses in 2 s


def test_measured_path_rate_wins_over_the_nic_speed() -> None:
    link = Link(nic_bits_per_second=10e9, nic_source="eth0", measured_bits_per_second=80e6,
                measured_source="download")
    assert link.usable_bits_per_second == 80e6


def test_saturation_is_the_lower_of_gpu_and_link() -> None:
    sat, evidence = saturation(server_seconds=0.5, concurrency=4, request_bytes=5e6,
                               response_bytes=1e3, link=Link(nic_bits_per_second=100e6))
    assert sat["gpu_requests_per_second"] == pytest.approx(8.0)
    assert sat["link_requests_per_second"] == pytest.approx(2.5)
    assert sat["limited_by"] == "link" and sat["arrival_rate_per_second"] == pytest.approx(2.5)
    assert "saturates at about 2.5 requests/s, limited by the link" in evidence[-1]
    sat, _ = saturation(server_seconds=2.0, concurrency=1, request_bytes=1e3,
                        response_bytes=1e3, link=Link(nic_bits_per_second=1e9))
    assert sat["limited_by"] == "gpu" and sat["arrival_rate_per_second"] == pytest.approx(0.5)


@pytest.mark.parametrize("text,expected", [("7B", 7 * 10**9), ("1.5b", 1_500_000_000),
                                           ("350M", 350 * 10**6), ("7000000000", 7 * 10**9)])
def test_parameter_counts(text: str, expected: int) -> None:
    assert parse_parameters(text) == expected


@pytest.mark.parametrize("text", ["", "7Q", "-7B", "0", "1e9", "B"])
def test_nonsense_parameter_counts_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_parameters(text)


# --- real file formats --------------------------------------------------------------

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 160, "num_attention_heads": 8, "num_hidden_layers": 3,
        "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 2048,
        "tie_word_embeddings": False, "torch_dtype": "float16"}


def llama_tensors(cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """The tensors of a Llama checkpoint of this shape, named as transformers names them."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    t = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        t |= {p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
              p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
              p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
              p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
              p + "post_attention_layernorm.weight": (h,)}
    return {k: np.zeros(s, dtype=np.float16) for k, s in t.items()}


def test_safetensors_headers_give_the_exact_count(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path, TINY)
    tensors = llama_tensors(TINY)
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:10]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in names[10:]}, str(folder / "model-00002-of-00002.safetensors"))
    exact = sum(a.size for a in tensors.values())
    model = load_model(folder)
    assert model.parameters == exact
    assert model.parameters_how.startswith("safetensors headers (2 files)")
    assert model.weights_bytes == 2 * exact and model.weight_format == "fp16"
    assert (model.layers, model.kv_heads, model.head_dim) == (3, 2, 8)
    # The formula for config.json alone agrees with the real checkpoint layout.
    assert derive_parameters(read_architecture(TINY, folder / "config.json")) == exact


def test_config_json_alone_derives_the_count(tmp_path: Path) -> None:
    model = load_model(hf_folder(tmp_path, TINY) / "config.json")
    assert model.parameters == sum(a.size for a in llama_tensors(TINY).values())
    assert model.parameters_how == "derived from config.json"


def write_gguf(path: Path, *, file_type: int = 1) -> dict[str, np.ndarray]:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(8192)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(8)
    w.add_head_count_kv(2)
    w.add_file_type(file_type)
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    tensors = {"token_embd.weight": np.zeros((100, 64), np.float16),
               "blk.0.attn_q.weight": np.zeros((64, 64), np.float16),
               "blk.0.attn_k.weight": np.zeros((16, 64), np.float16),
               "output_norm.weight": np.zeros((64,), np.float32)}
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def test_gguf_metadata_and_tensor_table(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    tensors = write_gguf(path)
    model = load_model(path)
    assert model.architecture == "llama" and model.weight_format == "F16"
    assert (model.layers, model.attention_heads, model.kv_heads, model.head_dim) == (2, 8, 2, 8)
    assert model.max_context == 8192
    assert model.parameters == sum(a.size for a in tensors.values())
    data = sum(a.nbytes for a in tensors.values())
    assert data <= model.weights_bytes < data + 32 * len(tensors)  # alignment padding only
    assert model.kv_cache_bytes_per_token == 2 * 2 * 2 * 8 * 2


def test_gguf_quantisation_is_named(tmp_path: Path) -> None:
    path = tmp_path / "q.gguf"
    write_gguf(path, file_type=int(gguf.LlamaFileType.MOSTLY_Q4_K_M))
    assert load_model(path).weight_format == "Q4_K_M"


def test_corrupt_files_are_one_line_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.gguf"
    write_gguf(good)
    raw = good.read_bytes()
    cases = {"truncated.gguf": raw[:40], "notgguf.gguf": b"PK\x03\x04" + raw[4:],
             "count.gguf": raw[:8] + struct.pack("<Q", 1 << 40) + raw[16:]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelError) as err:
            load_model(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)
    folder = hf_folder(tmp_path, TINY)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ModelError, match="corrupt header"):
        load_model(folder)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"nope!")
    with pytest.raises(ModelError, match="not JSON"):
        load_model(folder)


def test_nvml_gpus_through_the_fake_backend() -> None:
    fake = FakeNvml(make_gpus(2, memory_total_bytes=24 * GIB, memory_used_bytes=GIB))
    gpus, why = host_gpus(fake)
    assert why is None
    assert [g.total_bytes for g in gpus] == [24 * GIB, 24 * GIB]
    lost = FakeNvml(make_gpus(2, memory_total_bytes=24 * GIB))
    lost.lose(1)
    gpus, why = host_gpus(lost)
    assert len(gpus) == 1 and why is not None and "GPU 1 left out" in why
    gpus, why = host_gpus(FakeNvml(library_missing=True))
    assert gpus == [] and why is not None and "NVML library" in why


def test_nic_link_is_the_fastest_uplink_the_nic_probe_reports(tmp_path: Path) -> None:
    from ai_bottleneck.plan_host import nic_link
    from tests.test_nic_probe import KernelTree

    tree = KernelTree(tmp_path)
    tree.nic("lo", physical=False, speed=None)
    tree.nic("eth0", speed="1000")
    tree.nic("eth1", speed="25000")
    tree.nic("veth9", physical=False, speed="100000")  # virtual: not a way off the host
    link = nic_link(tree.proc, tree.sys)
    assert link.nic_bits_per_second == 25e9 and link.nic_source.startswith("eth1")
    (tree.nic_dir("eth1") / "speed").write_text("-1\n")  # link down or speed unknown
    assert nic_link(tree.proc, tree.sys).nic_bits_per_second == 1e9
