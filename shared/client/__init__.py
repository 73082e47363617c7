"""A Python client for the latentd API, blocking (``Client``) and asyncio (``AsyncClient``).

    from shared.client import Client

    with Client("http://127.0.0.1:8000", api_key="ltd_...") as latentd:
        job = latentd.generate("red heart", seed=42, steps=25)   # waits until it is done
        Path("heart.png").write_bytes(latentd.image(job.id, 0))

Keyword fields are the JSON body's (``negative_prompt``, ``width``, ``guidance_scale``,
``outpaint={"left": 16}``, ...; ``None`` leaves a field to the service). An image field
(``init_image``, ``mask_image``) given as ``bytes`` or a path is uploaded as a multipart
file; a ``str`` is sent as the base64 text the JSON body takes.

Jobs come back as ``Job``, a small dataclass with the fields callers branch on and
``data``, the job's whole JSON as the API sent it; ``models()`` returns the API's plain
dicts. Every refusal raises ``LatentdError`` with the API's ``{"error": {"code",
"message", "field"}}``. Needs only httpx: no FastAPI, pydantic or torch.
"""

from shared.client.clients import DEFAULT_URL, AsyncClient, Client
from shared.client.results import (
    Event,
    EventParser,
    Job,
    JobFailed,
    JobPage,
    LatentdConnectionError,
    LatentdError,
)

__all__ = ["DEFAULT_URL", "AsyncClient", "Client", "Event", "EventParser", "Job", "JobFailed",
           "JobPage", "LatentdConnectionError", "LatentdError"]
