"""Reference Data simulator: serves a JSON data file over the real API shape.

Runs in-process on the embedded default or standalone
(``python -m oms.sim.refdata --port 8081``). Test knobs under ``/_sim`` inject
errors and hangs and count calls, so tests can prove what the client did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

DEFAULT_DATA_PATH = Path(__file__).resolve().parent / "data" / "refdata.json"
HANG_S = 300.0
"""Longer than any client timeout, but bounded so a forgotten hang ends."""

_TEMPLATE_FILTERS = ("document_type", "channel", "language", "brand")
_encoder = msgspec.json.Encoder()


class Faults(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mode: Literal["ok", "error", "hang"] = "ok"
    status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 500


class _Data(msgspec.Struct, frozen=True):
    document_types: list[dict[str, Any]]
    brands: list[dict[str, Any]]
    templates: list[dict[str, Any]]


@dataclasses.dataclass
class _State:
    data: _Data
    brands: dict[str, dict[str, Any]]
    faults: Faults = dataclasses.field(default_factory=Faults)
    calls: Counter[str] = dataclasses.field(default_factory=Counter)
    # Set (and replaced) whenever faults change or the app shuts down, so hung
    # requests end then instead of holding up a test or a graceful stop.
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


STATE = web.AppKey("refdata_sim_state", _State)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(data_path: Path | None = None) -> web.Application:
    """Build the simulator app serving ``data_path`` (default: the shipped file)."""
    data = msgspec.json.decode((data_path or DEFAULT_DATA_PATH).read_bytes(), type=_Data)
    app = web.Application(middlewares=[_faults_middleware])
    app[STATE] = _State(data=data, brands={b["code"]: b for b in data.brands})
    app.router.add_get("/reference/document-types", _document_types, name="document-types")
    app.router.add_get("/reference/templates", _templates, name="templates")
    app.router.add_get("/reference/brands/{code}", _brand, name="brands")
    app.router.add_post("/_sim/faults", _set_faults)
    app.router.add_get("/_sim/stats", _stats)
    app.on_shutdown.append(_release_hangs)
    return app


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


@web.middleware
async def _faults_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Count every /reference call, then answer it as the fault mode says."""
    endpoint = request.match_info.route.name
    if not request.path.startswith("/reference/") or endpoint is None:
        return await handler(request)
    state = request.app[STATE]
    state.calls[endpoint] += 1
    faults = state.faults
    if faults.mode == "error":
        return _json({"error": "injected fault"}, status=faults.status)
    if faults.mode == "hang":
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.release.wait(), HANG_S)
        return _json({"error": "hang ended"}, status=503)
    return await handler(request)


async def _document_types(request: web.Request) -> web.Response:
    return _json(request.app[STATE].data.document_types)


async def _templates(request: web.Request) -> web.Response:
    # An absent or empty parameter does not filter; unknown parameters are ignored.
    wanted = {k: v for k in _TEMPLATE_FILTERS if (v := request.query.get(k))}
    rows = request.app[STATE].data.templates
    return _json([t for t in rows if all(t.get(k) == v for k, v in wanted.items())])


async def _brand(request: web.Request) -> web.Response:
    brand = request.app[STATE].brands.get(request.match_info["code"])
    if brand is None:
        return _json({"error": "unknown brand"}, status=404)
    return _json(brand)


async def _set_faults(request: web.Request) -> web.Response:
    try:
        faults = msgspec.json.decode(await request.read(), type=Faults)
    except msgspec.DecodeError as exc:
        return _json({"error": str(exc)}, status=400)
    state = request.app[STATE]
    state.faults = faults
    state.release.set()
    state.release = asyncio.Event()
    return _json(msgspec.to_builtins(faults))


async def _stats(request: web.Request) -> web.Response:
    calls = request.app[STATE].calls
    return _json(
        {"calls": {name: calls[name] for name in ("document-types", "templates", "brands")}}
    )


async def _release_hangs(app: web.Application) -> None:
    app[STATE].release.set()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Reference Data API simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--data", type=Path, default=None, help="JSON data file")
    args = parser.parse_args(argv)
    web.run_app(make_app(args.data), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
