"""Typed settings: environment variables (RAG_REC_*, nested with __) and an optional TOML/JSON file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from rag_rec.constants import RRF_K


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSettings(_Section):
    root: Path = Field(default=Path("data"), description="Folder with the bundled datasets")
    domain: str = "electronic"
    strict: bool = True
    quarantine_dir: Path | None = None
    journal: bool = Field(default=True, description="Keep products and events accepted through the API in a "
                          "durable journal (committed before the API answers) and replay it at start, so a restart "
                          "loses no acknowledged write (docs/ROBUSTNESS.md)")
    journal_path: Path | None = Field(default=None, description="The journal's SQLite file; default: "
                                      "ingest-journal.sqlite in index.path (deleting that folder deletes it)")


class EmbeddingSettings(_Section):
    model: str = Field(default="packaged:all-MiniLM-L6-v2",
                       description="'packaged:all-MiniLM-L6-v2', a Hugging Face id or a local sentence-transformers dir")
    batch_size: int = 64
    device: str = "cpu"
    normalize: bool = True
    cache_path: Path | None = Field(default=Path.home() / ".cache" / "rag_rec" / "embeddings.sqlite",
                                    description="On-disk embedding cache (None disables)")


class CFSettings(_Section):
    als_factors: int = 64
    als_iterations: int = 15
    als_regularization: float = 0.05
    substitute_discount: float = 0.5
    max_partners: int = Field(default=200, description="Co-occurrence partners kept per item (bounded query work)")
    max_group_items: int = Field(default=500, ge=2, description="A session, basket or (without sessions) user "
                                 "history longer than this is counted in consecutive windows of this many items: "
                                 "bounded fit memory for crawler sessions and heavy buyers")
    threads: int = 1


class BehaviourSettings(_Section):
    serve: bool = Field(default=False, description="Fit the behaviour model when the service starts and use it as a "
                        "feature of the served fusion (weight retrieve.weights.behaviour); API events extend the "
                        "histories it reads, the network is retrained when the data changes (an unchanged shop loads "
                        "it from behaviour.cache_dir, which `rag-rec behaviour train` fills ahead of the starts). Off "
                        "by default: it helps where shoppers have histories, a start without that job trains for "
                        "minutes of CPU, and each new (history, anchors) sequence costs a network pass and a scan "
                        "of the item vectors, ~1.5 ms at 92k products (bench/results/behaviour_serve.json)")
    dim: int = Field(default=64, ge=1)
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=2, ge=1)
    max_len: int = 20
    epochs: int = 20
    lr: float = 3e-3
    seed: int = 0
    max_windows_per_epoch: int = Field(default=20_000, description="Sample this many training windows per epoch "
                                                                    "on large data (keeps CPU training in minutes)")
    cache_dir: Path | None = Field(default=Path.home() / ".cache" / "rag_rec" / "behaviour",
                                   description="Trained networks kept per training data and settings: a start on "
                                               "unchanged data loads one in seconds (None: train at every start)")

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> BehaviourSettings:
        if self.dim % self.heads:
            raise ValueError(f"behaviour.dim ({self.dim}) must be a multiple of behaviour.heads ({self.heads})")
        return self


class IndexSettings(_Section):
    backend: Literal["edge", "qdrant"] = "edge"
    path: Path = Field(default=Path("var/index"), description="Data directory of the embedded engine")
    url: str | None = Field(default=None, description="Qdrant server URL; ':memory:' for qdrant-client local mode")
    api_key: str | None = None
    collection: str = "products"
    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    search_threads: int = Field(
        default=1, ge=0, description="Embedded engine: threads in its search pool (0: the engine's default, derived "
        "from the CPUs: 8 on 2 cores). One searches the segments in turn; on 2 cores it answered the retriever's query "
        "~40% faster at p95 than the default (docs/INDEX.md)")


class RetrieveSettings(_Section):
    k: int = 40
    prefetch_k: int = Field(default=80, description="Hits per engine prefetch in the pool the fusion scores; "
                            "chosen on validation splits (eval/experiments/served_settings.py)")
    partners_k: int = Field(default=60, ge=0, description="At most this many of the anchors' co-occurrence partners "
                            "join the pool (no more than prefetch_k or the request's k, whichever is larger); chosen "
                            "on validation splits (eval/experiments/served_partners.py)")
    rrf_k: int = Field(default=RRF_K, ge=1, description="k of the engine's reciprocal-rank fusion of the prefetch "
                       "branches, which forms the candidate pool that the explained weighted fusion then ranks")
    weights: dict[str, float] = Field(default_factory=lambda: {
        "text": 0.5, "text_max": 0.5, "lex": 0.75, "category": 0.3, "cooc": 0.5, "cf": 0.3, "behaviour": 0.3,
        "need": 1.0})
    substitute_discount: float = Field(default=1.0, description="Online retrieval: multiplier for candidates of "
                                       "the same kind as an anchor (likely substitutes); 1 disables. Off by default: "
                                       "bundles pair items of one kind often (31% / 52% of held-out Amazon bundle "
                                       "targets) and 0.5 cost 40-60% of served Recall@10 "
                                       "(eval/experiments/served_settings.py); composers keep one product per kind")
    fusion_backend: Literal["auto", "numba", "numpy"] = Field(
        default="auto", description="Online fusion of the candidate pool: one compiled pass (numba, the `fast` extra) "
        "or numpy calls (the reference); auto picks numba when installed")


class LLMSettings(_Section):
    backend: Literal["vllm", "openai", "none"] = "vllm"
    model: str = Field(default="smollm2-135m", description="Registry name, Hugging Face id or local directory")
    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint of a `vllm serve` deployment")
    api_key: str | None = None
    cache_dir: Path = Field(default=Path.home() / ".cache" / "rag_rec" / "models")
    max_tokens: int = 384
    temperature: float = 0.0
    repetition_penalty: float = Field(default=1.1, description="Discourages the looping small models fall into")
    timeout_s: float = 120.0
    max_model_len: int = 4096
    kv_cache_gb: int = 2
    dtype: str = Field(default="auto", description="Weights and activations in vLLM: 'auto' is bfloat16 on a GPU "
                       "and on CPUs with native bf16 (AVX512-BF16 or AMX), else float32 (bf16 is emulated there); "
                       "bf16 can flip a small model's greedy answer, 'float32' avoids that at some speed; or any "
                       "dtype vLLM takes")
    max_candidates: int = 30
    max_batch: int = Field(default=64, ge=1, description="Most requests the in-process engine decodes at once; "
                           "requests beyond it wait for running ones to finish (continuous batching)")
    judge_model: str | None = Field(default=None, description="Model of the LLM judge (default: `model`)")


class ServeSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535, description="0: a free port the OS picks (uvicorn logs which)")
    api_keys: list[str] = Field(default_factory=lambda: ["dev-key"])
    max_body_bytes: int = 64 * 1024
    rate_limit_per_minute: int = 600
    max_concurrency: int = 32
    compute_threads: int = Field(default=1, ge=1, description="Requests that run service code at once; the rest "
                                 "queue without taking GIL turns from the event loop, and a request waiting on the "
                                 "LLM frees its slot. Service code holds the GIL (the embedded engine too), so more "
                                 "slots mostly delay the loop (bench/results/load.json); scale out with replicas")
    keep_alive_s: int = Field(default=75, description="Idle keep-alive of client connections; longer than clients' "
                              "and load balancers' idle expiry (httpx: 5 s), so a reused connection is never closed "
                              "under a request")
    forwarded_allow_ips: str = Field(default="127.0.0.1", description="Proxies (comma-separated IPs or CIDRs, or "
                                     "*) whose X-Forwarded-For header names the client, so per-IP rate limits "
                                     "see the shopper, not the load balancer; '*' trusts every caller's header")

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: str) -> str:
        import ipaddress

        for part in (p.strip() for p in value.split(",")):
            if part == "*":
                continue
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"{part!r} is not an IP address or CIDR network (or *)") from None
        return value


def unknown_env_settings(environ) -> list[str]:
    """RAG_REC_* names that no section of Settings reads."""
    sections = {name.upper() for name in Settings.model_fields}
    unknown = []
    for name in environ:
        if not name.startswith("RAG_REC_") or name == "RAG_REC_CONFIG":
            continue
        section, sep, _ = name[len("RAG_REC_"):].partition("__")
        if not sep or section not in sections:
            unknown.append(name)
    return sorted(unknown)


class Settings(BaseSettings):
    """All configuration. Env vars like RAG_REC_INDEX__BACKEND=qdrant override the file."""

    model_config = SettingsConfigDict(env_prefix="RAG_REC_", env_nested_delimiter="__", extra="forbid")

    data: DataSettings = Field(default_factory=DataSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    cf: CFSettings = Field(default_factory=CFSettings)
    behaviour: BehaviourSettings = Field(default_factory=BehaviourSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    retrieve: RetrieveSettings = Field(default_factory=RetrieveSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides) -> "Settings":
        """Settings from explicit overrides > env vars > a TOML/JSON file (path or $RAG_REC_CONFIG) > defaults.
        A RAG_REC_ variable that names no section (a typo such as RAG_REC_LMM__MODEL or RAG_REC_LLM_MODEL) is an
        error: pydantic-settings would ignore it and the default would apply without a word."""
        from rag_rec.errors import UsageError

        unknown = unknown_env_settings(os.environ)
        if unknown:
            raise UsageError(f"unknown settings in the environment: {', '.join(unknown)} (sections: "
                             f"{', '.join(sorted(cls.model_fields))}; nested fields take a double underscore, "
                             "e.g. RAG_REC_LLM__MODEL)")
        path = path or os.environ.get("RAG_REC_CONFIG")
        if path is None:
            return cls(**overrides)
        file_path = Path(path)
        if not file_path.is_file():
            raise UsageError(f"settings file not found: {file_path}")
        if file_path.suffix not in (".toml", ".json"):
            raise UsageError(f"settings file {file_path}: expected a .toml or .json file")
        source_cls = TomlConfigSettingsSource if file_path.suffix == ".toml" else JsonConfigSettingsSource

        class _WithFile(cls):  # type: ignore[misc, valid-type]
            @classmethod
            def settings_customise_sources(cls_, settings_cls, init_settings, env_settings, dotenv_settings,
                                           file_secret_settings):
                if source_cls is TomlConfigSettingsSource:
                    file_source = source_cls(settings_cls, toml_file=file_path)
                else:
                    file_source = source_cls(settings_cls, json_file=file_path)
                return init_settings, env_settings, file_source

        import json
        import tomllib

        from pydantic import ValidationError

        source = f"settings file {file_path}"
        if any(name.startswith("RAG_REC_") and name != "RAG_REC_CONFIG" for name in os.environ):
            source += " (or the RAG_REC_* environment over it)"
        try:
            return cls.model_validate(_WithFile(**overrides).model_dump())
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}"
                + ("" if isinstance(e["input"], (dict, list)) else f" (got {e['input']!r})") for e in exc.errors())
            raise UsageError(f"{source}: {problems}") from None
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"settings file {file_path}: {exc}") from None
        except TypeError:
            raise UsageError(f"settings file {file_path}: expected a table of sections (such as [serve]) at the top "
                             "level") from None
