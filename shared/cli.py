"""``latentd``: the command line.

Over the API (``--url`` or LATENTD_URL, ``--api-key`` or LATENTD_API_KEY):
``latentd generate "red heart" -o heart.png`` (a progress bar over the job's events, then
the images written), ``latentd upscale heart.png``, ``latentd jobs``, ``latentd cancel
ID``, ``latentd models``.

In the service's Redis (LATENTD_REDIS_URL, the same settings as the service):
``latentd keys create --name app1`` prints a new API key once; ``latentd keys list``;
``latentd keys revoke <id>``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shared.api_keys import ApiKeyStore
from shared.client import DEFAULT_URL, Client, Job, LatentdConnectionError, LatentdError
from shared.settings import get_settings

TASKS = ("text-to-image", "image-to-image", "inpaint", "outpaint", "upscale", "text-to-video")
FORMATS = ("png", "jpeg", "webp", "mp4", "gif")
EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".mp4": "mp4",
              ".gif": "gif"}
UPSCALE = "upscale"
SIDES = ("left", "right", "top", "bottom")

F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """Ends the command with ``latentd: <message>`` on stderr and status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"latentd: {self.message}", err=True)


class Interrupted(Failure):
    exit_code = 130  # Ctrl-C: the shell's convention for "interrupted"


class LatentdGroup(click.Group):
    """Reports the API's refusals (and an unreachable service) as failures."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LatentdError as exc:
            raise Failure(str(exc)) from exc


@click.group(cls=LatentdGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """latentd: generate images with a latentd service, follow its jobs, manage its keys."""


def service_options(command: F) -> F:
    """``--url`` and ``--api-key``, from the environment when not given."""
    command = click.option(
        "--api-key", envvar="LATENTD_API_KEY", show_envvar=True,
        help="API key (ltd_...), when the service has keys.")(command)
    return click.option(
        "--url", envvar="LATENTD_URL", default=DEFAULT_URL, show_default=True, show_envvar=True,
        help="The service's base URL.")(command)


# -- generate -------------------------------------------------------------------------


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None
          ) -> tuple[int, int] | None:
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", value)
    if match is None:
        raise click.BadParameter("write it WIDTHxHEIGHT, e.g. 512x768")
    return int(match.group(1)), int(match.group(2))


def _json_object(_ctx: click.Context, _param: click.Parameter, value: str | None
                 ) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object")
    return parsed


def _loras(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
           ) -> list[dict[str, Any]] | None:
    loras = []
    for value in values:
        name, _, scale = value.partition(":")
        try:
            loras.append({"name": name, "scale": float(scale) if scale else 1.0})
        except ValueError:
            raise click.BadParameter(f"{value!r}: write NAME or NAME:SCALE, e.g. ink:0.8"
                                     ) from None
    return loras or None


def _controls(_ctx: click.Context, _param: click.Parameter,
              values: tuple[tuple[str, str], ...]) -> list[dict[str, Any]] | None:
    controls = []
    for model, image in values:
        # A job's output is named as the API names it; anything else is a file to send.
        source: Any = image if image.startswith("job:") else Path(image)
        if isinstance(source, Path) and not source.is_file():
            raise click.BadParameter(f"{image!r} is not a file (or job:<id>/<index>)")
        controls.append({"model": model, "image": source})
    return controls or None


def _image_source(_ctx: click.Context, _param: click.Parameter, value: str) -> Path | str:
    """A file to upload, or ``job:<id>/<index>`` (an output of the caller's job) as it is."""
    if value.startswith("job:"):
        return value
    path = Path(value)
    if not path.is_file():
        raise click.BadParameter(f"{value!r} is not a file (or job:<id>/<index>)")
    return path


def job_options(command: F) -> F:
    """What every command that runs a job takes: its priority and metadata, whether to
    wait and show progress, and the service's address."""
    for option in reversed((
        click.option("--priority", type=click.Choice(("low", "normal", "high"))),
        click.option("--metadata", callback=_json_object, metavar="JSON",
                     help="A JSON object kept with the job and echoed back."),
        click.option("--no-wait", is_flag=True, help="Print the job id once queued, and exit."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
        service_options,
    )):
        command = option(command)
    return command


@cli.command()
@click.argument("prompt")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Image file to write (default: <job id>.<format>); with -n, NAME.png, "
                   "NAME-1.png, ... Its extension picks the format unless --format is given.")
@click.option("-n", "--num-images", type=int, help="How many images (seeds seed, seed+1, ...).")
@click.option("--model", help="A model name from `latentd models` (default: the service's).")
@click.option("--negative", "negative_prompt", help="Negative prompt.")
@click.option("--size", callback=_size, metavar="WxH", help="Output size, e.g. 512x768.")
@click.option("--width", type=int, help="Output width (a multiple of 8).")
@click.option("--height", type=int, help="Output height (a multiple of 8).")
@click.option("--steps", type=int, help="Denoising steps.")
@click.option("--guidance", "guidance_scale", type=float,
              help="Guidance scale (classifier-free; Flux dev: its distilled guidance).")
@click.option("--true-cfg", "true_cfg_scale", type=float,
              help="Flux: true CFG scale (above 1 the negative prompt counts).")
@click.option("--refiner", help="SDXL: refiner model the base hands over to.")
@click.option("--switch-at", type=float, help="SDXL refiner: fraction of the schedule "
              "the base runs (default 0.8).")
@click.option("--scheduler", help="Sampler, e.g. ddim or euler_ancestral.")
@click.option("--seed", type=int, help="Seed of the first image (default: drawn).")
@click.option("--task", type=click.Choice(TASKS), help="Default: inpaint with --mask, "
              "outpaint with a margin, image-to-image with --init-image, else text-to-image "
              "(upscale: see `latentd upscale`).")
@click.option("--init-image", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Input image of image-to-image, inpaint and outpaint (uploaded).")
@click.option("--mask", "mask_image", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Inpaint mask (uploaded).")
@click.option("--strength", type=float, help="Denoising strength of image-to-image/inpaint.")
@click.option("--outpaint-left", type=int, help="Outpaint: pixels added on the left.")
@click.option("--outpaint-right", type=int, help="Outpaint: pixels added on the right.")
@click.option("--outpaint-top", type=int, help="Outpaint: pixels added on top.")
@click.option("--outpaint-bottom", type=int, help="Outpaint: pixels added at the bottom.")
@click.option("--lora", "loras", multiple=True, callback=_loras, metavar="NAME[:SCALE]",
              help="Add a LoRA from the service's `latentd models` (repeatable; scale 1).")
@click.option("--control", multiple=True, nargs=2, callback=_controls,
              metavar="CONTROLNET IMAGE",
              help="Steer with a ControlNet and its image: a file or job:<id>/<index> "
                   "(repeatable).")
@click.option("--frames", "num_frames", type=int, help="text-to-video: frames per video.")
@click.option("--fps", type=int, help="text-to-video: frames per second of the file.")
@click.option("--format", "output_format", type=click.Choice(FORMATS),
              help="Image format (png, jpeg, webp) or, for text-to-video, video format (mp4, "
                   "webp, gif).")
@job_options
def generate(prompt: str, output: Path | None, size: tuple[int, int] | None, no_wait: bool,
             quiet: bool, url: str, api_key: str | None, **options: Any) -> None:
    """Generate images (or videos, --task text-to-video) from PROMPT and write them; prints
    each file written.

    Ctrl-C while it runs cancels the job.
    """
    with Client(url, api_key) as client:
        _run(client, prompt, _request_fields(options, size, output), output, no_wait, quiet)


def _run(client: Client, prompt: str, fields: dict[str, Any], output: Path | None,
         no_wait: bool, quiet: bool) -> None:
    """Submit, follow on a progress bar (Ctrl-C cancels), write the outputs."""
    job = client.submit(prompt, **fields)
    if not quiet:
        click.echo(f"submitted {job.id}", err=True)
    if no_wait:
        click.echo(job.id)
        return
    try:
        job = _follow(client, job, quiet)
    except KeyboardInterrupt:
        client.cancel(job.id)
        raise Interrupted(f"canceled {job.id}") from None
    if job.status != "succeeded":
        error = job.error or {}
        raise Failure(f"job {job.id} {job.status}: {error.get('message', 'no images')}")
    for path, info in zip(_output_paths(job, output), job.images, strict=True):
        path.write_bytes(client.image(job.id, info["index"]))
        click.echo(str(path))


@cli.command()
@click.argument("image", callback=_image_source, metavar="IMAGE")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Image file to write (default: <job id>.<format>). Its extension picks "
                   "the format unless --format is given.")
@click.option("--model", help="An upscaling model from `latentd models` (default: the "
              "first the service lists).")
@click.option("--scale", type=int, help="Upscaling factor (default: the model's).")
@click.option("--noise-level", type=int, help="Noise added to the input before upscaling "
              "(models that take it; default: the model's).")
@click.option("--prompt", default="", help="What the image shows (models that read one).")
@click.option("--steps", type=int, help="Denoising steps.")
@click.option("--seed", type=int, help="Seed (default: drawn).")
@click.option("--format", "output_format", type=click.Choice(("png", "jpeg", "webp")),
              help="Image format.")
@job_options
def upscale(image: Path | str, output: Path | None, prompt: str, model: str | None,
            no_wait: bool, quiet: bool, url: str, api_key: str | None, **options: Any) -> None:
    """Upscale IMAGE (a file, or job:<id>/<index>: an image of one of your jobs) and write
    the result; prints the file written.

    Ctrl-C while it runs cancels the job.
    """
    fields = {**options, "task": UPSCALE, "init_image": image}
    if fields["output_format"] is None and output is not None:
        fields["output_format"] = EXTENSIONS.get(output.suffix.lower())
    with Client(url, api_key) as client:
        fields["model"] = model or _first_upscaler(client)
        _run(client, prompt, fields, output, no_wait, quiet)


def _first_upscaler(client: Client) -> str:
    for entry in client.models():
        if UPSCALE in entry.get("tasks", ()):
            return str(entry["name"])
    raise Failure("the service lists no model that upscales (`latentd models`)")


def _request_fields(options: dict[str, Any], size: tuple[int, int] | None,
                    output: Path | None) -> dict[str, Any]:
    """The request's fields from the options; ``None`` ones are left to the service."""
    fields = dict(options)
    if size is not None:
        if fields["width"] is not None or fields["height"] is not None:
            raise click.UsageError("give --size or --width/--height, not both")
        fields["width"], fields["height"] = size
    refiner, switch_at = fields.pop("refiner"), fields.pop("switch_at")
    if switch_at is not None and refiner is None:
        raise click.UsageError("--switch-at needs --refiner")
    if refiner is not None:
        fields["refiner"] = {"model": refiner,
                             **({"switch_at": switch_at} if switch_at is not None else {})}
    margins = {side: fields.pop(f"outpaint_{side}") for side in SIDES}
    if any(m is not None for m in margins.values()):
        fields["outpaint"] = {side: m for side, m in margins.items() if m is not None}
    if fields["task"] is None:
        fields["task"] = ("inpaint" if fields["mask_image"] is not None
                          else "outpaint" if "outpaint" in fields
                          else "image-to-image" if fields["init_image"] is not None
                          else None)
    if fields["output_format"] is None and output is not None:
        fields["output_format"] = EXTENSIONS.get(output.suffix.lower())
    return fields


def _output_paths(job: Job, output: Path | None) -> list[Path]:
    """``output``, then ``output`` with -1, -2, ... before its extension (one per image)."""
    extension = "jpg" if job.request.get("output_format") == "jpeg" else job.request.get(
        "output_format", "png")
    first = output or Path(f"{job.id}.{extension}")
    return [first if n == 0 else first.with_name(f"{first.stem}-{n}{first.suffix}")
            for n in range(len(job.images))]


def _follow(client: Client, job: Job, quiet: bool) -> Job:
    """The job once it has finished, shown on a progress bar (stderr) from its events."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=quiet) as bar:
        task = bar.add_task(job.id, total=None)

        def show(current: Job) -> None:
            steps = current.progress
            position = current.data.get("queue_position")
            status = f"queued ({position} ahead)" if current.status == "queued" and position \
                else current.status
            total = steps.get("total_steps") or None
            done = total if current.status == "succeeded" else steps.get("step", 0)
            bar.update(task, description=f"{current.id} {status}", total=total, completed=done)

        try:
            for event in client.events(job.id):
                show(event.job)
                if event.job.done:
                    return event.job
        except LatentdConnectionError:
            pass  # the stream broke off: wait for the job by polling instead
        job = client.wait(job.id)
        show(job)
        return job


# -- jobs, cancel, models -----------------------------------------------------------------


@cli.command()
@click.option("--status", type=click.Choice(("queued", "running", "succeeded", "failed",
                                             "canceled")))
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--cursor", help="next_cursor of the page before (printed on stderr).")
@click.option("--owner", help="Admin keys: another key's id.")
@click.option("--json", "as_json", is_flag=True, help="The API's JSON page instead.")
@service_options
def jobs(status: str | None, limit: int, cursor: str | None, owner: str | None,
         as_json: bool, url: str, api_key: str | None) -> None:
    """Your jobs, newest first: id, status, created_at, model, size, images, prompt."""
    with Client(url, api_key) as client:
        page = client.list(status, limit=limit, cursor=cursor, owner=owner)
    if as_json:
        click.echo(json.dumps({"jobs": [job.data for job in page.jobs],
                               "next_cursor": page.next_cursor}, indent=2))
        return
    for job in page.jobs:
        plan = job.request
        click.echo("\t".join([
            job.id, job.status, job.data.get("created_at", ""), plan.get("model", ""),
            f"{plan.get('width')}x{plan.get('height')}", str(len(job.images)),
            plan.get("prompt", "")[:60].replace("\t", " ").replace("\n", " "),
        ]))
    if page.next_cursor:
        click.echo(f"more: latentd jobs --cursor {page.next_cursor}", err=True)


@cli.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@service_options
def cancel(job_ids: tuple[str, ...], url: str, api_key: str | None) -> None:
    """Cancel jobs (a finished one stays as it is); prints each id and its status."""
    with Client(url, api_key) as client:
        for job_id in job_ids:
            job = client.cancel(job_id)
            click.echo(f"{job.id}\t{job.status}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The API's JSON instead.")
@service_options
def models(as_json: bool, url: str, api_key: str | None) -> None:
    """The service's models: name, available|-, workers, default and max size, tasks."""
    with Client(url, api_key) as client:
        listed = client.models()
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    for model in listed:
        click.echo("\t".join([
            model["name"], "available" if model.get("available") else "-",
            str(model.get("workers", 0)),
            f"{model['default_width']}x{model['default_height']}",
            f"{model['max_width']}x{model['max_height']}", ",".join(model.get("tasks", [])),
        ]))


# -- keys -----------------------------------------------------------------------------


class KeysGroup(click.Group):
    """Reports an unreachable Redis as a failure."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except redis.RedisError as exc:
            raise Failure(f"Redis at {get_settings().redis_url} is unreachable: {exc}") from exc


@cli.group(cls=KeysGroup)
@click.pass_context
def keys(ctx: click.Context) -> None:
    """API keys, in the service's Redis (LATENTD_REDIS_URL)."""
    settings = get_settings()
    ctx.obj = ApiKeyStore(redis.Redis.from_url(settings.redis_url, decode_responses=True))


@keys.command("create")
@click.option("--name", required=True, help="Who the key is for, e.g. app1.")
@click.option("--admin", is_flag=True, help="May see every key's jobs.")
@click.pass_obj
def create_key(store: ApiKeyStore, name: str, admin: bool) -> None:
    """Make a key and print its secret (once)."""
    key, secret = store.create(name, admin=admin)
    click.echo(secret)
    click.echo(f"created {key.id} ({key.name}{', admin' if key.admin else ''}); the secret "
               "above is shown only now", err=True)


@keys.command("list")
@click.pass_obj
def list_keys(store: ApiKeyStore) -> None:
    """The keys (never their secrets): id, name, admin|-, created_at."""
    for key in store.all():
        click.echo(f"{key.id}\t{key.name}\t{'admin' if key.admin else '-'}\t{key.created_at}")


@keys.command("revoke")
@click.argument("key_id")
@click.pass_obj
def revoke_key(store: ApiKeyStore, key_id: str) -> None:
    """Stop a key from working."""
    if not store.revoke(key_id):
        raise Failure(f"no key {key_id}")
    click.echo(f"revoked {key_id}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``latentd`` console script; returns its exit status."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="latentd")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
