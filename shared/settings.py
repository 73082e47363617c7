"""The one place that reads the environment: every ``LATENTD_*`` setting, validated at start."""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    ByteSize,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.heartbeat import HEARTBEAT_INTERVAL_SECONDS, MISSED_BEATS
from shared.model_registry import DEFAULT_MODEL, EMOJI, EMOJI_UPSCALER


class Settings(BaseSettings):
    """Service configuration, read from ``LATENTD_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="LATENTD_", extra="ignore")

    # Where things live.
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Where images live: unset (or "file://") = ``<data_dir>/images``; ``file:///path`` = a
    # local directory; ``s3://bucket/prefix`` = an S3-compatible object store, whose endpoint
    # and credentials boto3 reads itself (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
    storage_url: str | None = None
    # How the API answers GET /v1/jobs/{id}/images/{n}: "stream" sends the bytes it reads
    # from storage; "redirect" answers 307 to a presigned URL of the object (s3:// only),
    # valid for image_url_expiry_seconds, so image bytes never pass through the API.
    image_delivery: Literal["stream", "redirect"] = "stream"
    image_url_expiry_seconds: int = Field(300, ge=1, le=7 * 24 * 3600)  # SigV4's maximum
    # The endpoint presigned URLs name, when clients reach the object store at another
    # address than the service does (e.g. http://minio:9000 inside docker compose).
    s3_public_endpoint_url: str | None = None

    # Models: the default served when a request names none, extra models as JSON
    # name -> source (a local diffusers directory or a hub id), and the models a
    # generation worker process loads (empty = just the default model).
    default_model: str = DEFAULT_MODEL
    models: dict[str, str | dict[str, Any]] = Field(default_factory=dict)
    # The comfortable way to declare many models: a TOML file of [models.<name>] tables,
    # merged with LATENTD_MODELS (which wins for a name in both).
    models_file: Path | None = None
    worker_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    device: str = "cpu"
    # LoRA adapters requests may add (``loras``): every ``<name>.safetensors`` here. The API
    # and the generation workers must see the same files.
    lora_dir: Path | None = None
    torch_threads: int | None = Field(None, ge=1, le=256)
    # The GPU fast path (worker/fast_path.py): SDPA attention, channels_last, VAE
    # slicing/tiling and TF32 on CUDA (fast_path=false: plain diffusers); torch.compile
    # with a warm-up before the worker reports ready; model CPU offload for GPUs too small
    # for the model. None of it applies on CPU.
    fast_path: bool = True
    torch_compile: bool = False
    cpu_offload: bool = False
    # Bytes of weights one generation worker process keeps loaded ("12GiB", "800MB" or a
    # number of bytes); models beyond it load when a job needs them, evicting the least
    # recently used idle one (worker/model_cache.py). Unset: every served model stays
    # loaded from the start.
    worker_memory_budget: ByteSize | None = Field(None, ge=1)

    # Callers. Keys made with `latentd keys create` live in Redis; these add keys by
    # configuration: a file of "<name> <secret> [admin]" lines, and one admin secret.
    api_keys_file: Path | None = None
    admin_key: str | None = Field(None, min_length=16)
    # Requests per key (and for the keyless "public" caller), in the `limits` package's
    # notation, e.g. "600/minute"; unset: no rate limit.
    rate_limit: str | None = None
    # Queued jobs per key, and in all per model, before submits are refused (429/503).
    max_queued_jobs_per_key: int = Field(1000, ge=1)
    max_queued_jobs: int = Field(10_000, ge=1)

    # Jobs.
    job_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    max_wait_seconds: int = Field(60, ge=0, le=600)
    # Followers (SSE streams and Prefer: wait) per API process, in all and per key: each
    # holds a request open and a slot in the process's one pub/sub connection.
    max_streams: int = Field(1000, ge=1, le=100_000)
    max_streams_per_key: int = Field(100, ge=1, le=100_000)
    # text-to-video: frames × width × height of one video at most (refused at submit above
    # it). Memory and time grow with it; the default is AnimateDiff's longest clip (32
    # frames) at SD 1.5's 512×512.
    max_video_pixels: int = Field(32 * 512 * 512, ge=64 * 64)

    # Long GPU tasks: soft limit raises inside the task (job marked failed), hard
    # limit kills the process; the broker must not redeliver a task still running,
    # so its visibility timeout stays above the hard limit.
    task_soft_time_limit: int = Field(600, ge=1)
    task_time_limit: int = Field(660, ge=1)
    broker_visibility_timeout: int = Field(3600, ge=1)
    task_max_attempts: int = Field(3, ge=1, le=20)
    # Dynamic batching (shared/batching.py): a worker runs up to this many images of
    # compatible queued jobs in one pipeline call (1 = every job alone), waiting at most
    # the wait for companions to arrive when the batch is not full. A worker whose
    # batch runs out of device memory halves its own limit (worker/tasks.py).
    max_batch: int = Field(8, ge=1, le=64)
    batch_wait_ms: int = Field(50, ge=0, le=10_000)
    # A worker process beats every heartbeat interval (its key lives three of them); the
    # reaper in each API process looks at the running jobs every reaper interval and takes
    # back those whose worker stopped beating, or that ran past the hard limit + grace.
    heartbeat_interval_seconds: float = Field(HEARTBEAT_INTERVAL_SECONDS, ge=0.1, le=60)
    reaper_interval_seconds: float = Field(10.0, ge=0.1, le=600)
    reaper_grace_seconds: float = Field(60.0, ge=0, le=3600)

    # Webhooks (Standard Webhooks). The secret is "whsec_" + base64.
    webhook_secret: str | None = None
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=120)
    webhook_max_attempts: int = Field(8, ge=1, le=30)
    webhook_retry_base_seconds: float = Field(5.0, gt=0)
    webhook_retry_max_seconds: float = Field(3600.0, gt=0)
    # Refuse webhook URLs that resolve to loopback/private/link-local addresses
    # (SSRF). Tests and single-laptop setups with a local receiver turn it on.
    webhook_allow_private: bool = False

    # Log lines (shared/logs.py): "json" (one object a line), "text" (for people), or
    # "auto": text when the log stream (stderr) is a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "text"] = "auto"

    _models_from_file: set[str] = PrivateAttr(default_factory=set)

    @model_validator(mode="before")
    @classmethod
    def _split_worker_models(cls, values: dict) -> dict:
        raw = values.get("worker_models")
        if isinstance(raw, str):
            values["worker_models"] = [m.strip() for m in raw.split(",") if m.strip()]
        return values

    @field_validator("worker_memory_budget", mode="before")
    @classmethod
    def _empty_budget_is_unlimited(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("LATENTD_TASK_SOFT_TIME_LIMIT must be below LATENTD_TASK_TIME_LIMIT")
        if self.broker_visibility_timeout <= self.task_time_limit:
            raise ValueError(
                "LATENTD_BROKER_VISIBILITY_TIMEOUT must be above LATENTD_TASK_TIME_LIMIT, "
                "or Redis redelivers tasks that are still running"
            )
        if self.rate_limit is not None:
            from limits import parse  # the same parser the limiter uses

            try:
                parse(self.rate_limit)
            except ValueError:
                raise ValueError(
                    f"LATENTD_RATE_LIMIT {self.rate_limit!r} is not a rate like '600/minute'"
                ) from None
        if self.webhook_secret is not None and not self.webhook_secret.startswith("whsec_"):
            raise ValueError("LATENTD_WEBHOOK_SECRET must look like 'whsec_<base64>'")
        _check_storage_url(self.storage_url)
        if self.image_delivery == "redirect" and self.storage_scheme != "s3":
            raise ValueError("LATENTD_IMAGE_DELIVERY=redirect needs an s3:// LATENTD_STORAGE_URL "
                             "(a local directory has no URL to redirect to)")
        public = self.s3_public_endpoint_url
        if public is not None and urlsplit(public).scheme not in ("http", "https"):
            raise ValueError("LATENTD_S3_PUBLIC_ENDPOINT_URL must be an http(s):// URL")
        return self

    @model_validator(mode="after")
    def _merge_models_file(self) -> Settings:
        if self.models_file is None:
            return self
        from_file = read_models_file(self.models_file)
        self._models_from_file = set(from_file) - set(self.models)
        self.models = {**from_file, **self.models}
        return self

    def model_origin(self, name: str) -> str:
        """Where model ``name`` was declared, as an error message should name it."""
        if name in self._models_from_file:
            return f"LATENTD_MODELS_FILE {self.models_file} [models.{name}]"
        return f"LATENTD_MODELS['{name}']"

    @property
    def served_models(self) -> list[str]:
        """Models a generation worker started with these settings loads: the listed ones,
        else the default model, with the embedded upscaler beside the embedded emoji model
        (so that ``make run`` upscales what it draws)."""
        if self.worker_models:
            return self.worker_models
        if self.default_model == EMOJI:
            return [EMOJI, EMOJI_UPSCALER]
        return [self.default_model]

    @property
    def heartbeat_ttl_seconds(self) -> float:
        """How long a worker's heartbeat outlives its last beat: three missed beats."""
        return MISSED_BEATS * self.heartbeat_interval_seconds

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def storage_scheme(self) -> str:
        """``file`` or ``s3``: which storage backend LATENTD_STORAGE_URL names."""
        return urlsplit(self.storage_url).scheme if self.storage_url else "file"


def read_models_file(path: Path) -> dict[str, str | dict[str, Any]]:
    """The ``[models.<name>]`` tables of a TOML file (a bare string is a source);
    ``ValueError`` naming the file and the key otherwise."""
    import tomllib

    name = f"LATENTD_MODELS_FILE {path}"
    try:
        document = tomllib.loads(path.expanduser().read_text())
    except OSError as exc:
        raise ValueError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{name}: not valid TOML ({exc})") from None
    unknown = [key for key in document if key != "models"]
    if unknown:
        raise ValueError(f"{name}: unknown top-level key '{unknown[0]}' (models are declared "
                         "as [models.<name>] tables)")
    models = document.get("models", {})
    # ValueError, not TypeError: pydantic reports only the former as a settings error.
    if not isinstance(models, dict):
        raise ValueError(  # noqa: TRY004
            f"{name}: 'models' must be a table of [models.<name>] tables")
    for model, entry in models.items():
        if not isinstance(entry, str | dict):
            raise ValueError(  # noqa: TRY004
                f"{name}: [models.{model}] must be a table (or a source string)")
    return models


# S3's bucket naming rules (3-63 lowercase letters, digits, dots and hyphens), which MinIO
# and the other S3-compatible stores follow too.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _check_storage_url(url: str | None) -> None:
    if not url:
        return
    parts = urlsplit(url)
    name = "LATENTD_STORAGE_URL"
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ValueError(f"{name} {url!r}: write a local directory as file:///absolute/path")
    elif parts.scheme == "s3":
        if not _BUCKET.fullmatch(parts.netloc):
            raise ValueError(f"{name} {url!r}: s3://<bucket>/<prefix> needs a valid bucket name "
                             "(3-63 lowercase letters, digits, dots and hyphens)")
        if parts.query or parts.fragment or {".", ".."} & set(parts.path.split("/")):
            raise ValueError(f"{name} {url!r}: the prefix must be a plain path")
    else:
        raise ValueError(f"{name} {url!r}: use s3://<bucket>/<prefix> or file:///<directory>")


@lru_cache
def get_settings() -> Settings:
    """Settings for this process; exits with a readable message on a bad value.

    One stderr line per problem, each naming the variable:
    ``latentd: invalid configuration: LATENTD_PORT: Input should be a valid integer ...``.
    """
    import json
    import re

    from pydantic_settings import SettingsError

    prefix = Settings.model_config.get("env_prefix", "")
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err["loc"]:  # a model validator: its message names the variables
                problems.append(err["msg"].removeprefix("Value error, "))
                continue
            name = f"{prefix}{str(err['loc'][0]).upper()}"
            within = ".".join(str(part) for part in err["loc"][1:])
            problems.append(f"{name}: {within}: {err['msg']}" if within else
                            f"{name}: {err['msg']}")
    except SettingsError as exc:
        # Raised before validation, for the first variable that cannot be decoded at all
        # (invalid JSON in a dict or list setting), with the decoder's error as its cause.
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"{prefix}{field.group(1).upper()}" if field else "settings"
        cause = exc.__cause__
        if isinstance(cause, json.JSONDecodeError):
            detail = f"not valid JSON ({cause})"
        else:
            detail = str(cause or exc)
        problems = [f"{name}: {detail}"]
    print("\n".join(f"latentd: invalid configuration: {problem}" for problem in problems),
          file=sys.stderr)
    raise SystemExit(2)
