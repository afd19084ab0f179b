"""`specs-local serve`: the preset's models behind an OpenAI-compatible API."""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import click
import uvicorn
from starlette.applications import Starlette

from app.commands.common import (
    Consent,
    RuntimeOptions,
    build_settings,
    echo_err,
    method_option,
    open_preset,
    preset_option,
    runtime_options,
    search_options,
    yes_option,
)
from app.config import load_catalog
from app.errors import UserError
from app.presets import ResolvedPreset, resolve_preset
from app.search.methods import REGISTRY, needs_draft
from app.search.settings import SearchSettings
from app.serve.app import ServedPreset, create_app


def served_methods(preset: ResolvedPreset, method: str | None) -> list[str]:
    """The methods to serve: `method` alone, or every one the preset's models can run, its own first."""
    if method is not None:
        if needs_draft(method) and preset.draft is None:
            raise UserError(
                f"Method {method} needs a draft model, and preset {preset.name} has none; choose another --method."
            )
        return [method]
    own = preset.preset.method
    ordered = [own, *(m for m in REGISTRY if m != own)]
    return [m for m in ordered if preset.draft is not None or not needs_draft(m)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, which may resolve to any interface
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    if api_key or is_loopback(host):
        return None
    return (
        f"warning: listening on {host} without an API key: anyone who can reach this machine can run searches;"
        " pass --api-key (or set SPECS_LOCAL_API_KEY)."
    )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the models load so that a taken port fails at once."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise UserError(
            f"Cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port (0 picks a free one) or --host."
        ) from None
    return sock


@contextmanager
def serving(
    chosen: ResolvedPreset,
    settings: SearchSettings,
    methods: Sequence[str],
    *,
    runtime: RuntimeOptions,
    consent: Consent,
    queue_size: int,
    api_key: str | None,
) -> Iterator[Starlette]:
    """The app over the preset's engines, opened as `solve` opens them and closed on exit."""
    with open_preset(chosen, settings, runtime=runtime, consent=consent) as engines:
        served = ServedPreset(chosen.name, tuple(methods), settings)
        yield create_app(served, engines, queue_size=queue_size, api_key=api_key)


class Server(uvicorn.Server):
    """Says where it listens once it does; a stop signal also stops the running search."""

    def __init__(self, config: uvicorn.Config, *, on_listen: Callable[[], None], on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_listen = on_listen
        self._on_stop = on_stop

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_listen()

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._on_stop()
        super().handle_exit(sig, frame)


@click.command("serve")
@preset_option()
@method_option("Serve this method only (default: every method the preset's models can run).")
@click.option(
    "--host",
    default="127.0.0.1",
    envvar="SPECS_LOCAL_HOST",
    show_envvar=True,
    show_default=True,
    help="Address to listen on; another than this machine's loopback needs --api-key, e.g. --host 0.0.0.0.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    envvar="SPECS_LOCAL_PORT",
    show_envvar=True,
    show_default=True,
    help="Port to listen on (0 picks a free one), e.g. --port 8000.",
)
@click.option(
    "--api-key",
    default=None,
    envvar="SPECS_LOCAL_API_KEY",
    show_envvar=True,
    help="Require `Authorization: Bearer KEY` on every request.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(1, 10_000),
    default=8,
    envvar="SPECS_LOCAL_QUEUE_SIZE",
    show_envvar=True,
    show_default=True,
    help="Requests that may wait while one search runs; more get 429, e.g. --queue-size 2.",
)
@search_options
@yes_option()
@runtime_options
def command(
    preset: str | None,
    method: str | None,
    host: str,
    port: int,
    api_key: str | None,
    queue_size: int,
    yes: bool,
    threads: int | None,
    gpu_layers: int | None,
    **search: Any,
) -> None:
    """Serve the preset's search as OpenAI-compatible models at /v1 (one per method).

    A request's question is its last user message; the accepted steps stream
    as `reasoning_content`, the final step as `content`. Search options given
    here are the defaults; a request may send its own as extra body fields.

    \b
    Examples:
      specs-local serve
      specs-local serve --preset laptop --port 8000 --api-key "$(openssl rand -hex 16)"
      curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "specs-local/cpu-dev/specs", "messages": [{"role": "user", "content": "What is 12 + 30?"}]}'
    """
    chosen = resolve_preset(load_catalog(), preset)
    settings = build_settings(chosen.preset.search, search)
    methods = served_methods(chosen, method)
    warning = exposure_warning(host, api_key)
    consent = Consent(assume_yes=yes, interactive=sys.stdin.isatty())
    with (
        bind(host, port) as sock,
        serving(
            chosen,
            settings,
            methods,
            runtime=RuntimeOptions(threads, gpu_layers),
            consent=consent,
            queue_size=queue_size,
            api_key=api_key,
        ) as app,
    ):
        bound_host, bound_port = sock.getsockname()[:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host

        def announce() -> None:
            echo_err(f"specs-local serves preset {chosen.name} at http://{url_host}:{bound_port}/v1")
            for m in methods:
                echo_err(f"  model {app.state.served.model_id(m)}")
            if warning:
                click.secho(warning, fg="yellow", err=True)
            echo_err("Ctrl-C stops it.")

        # No log_config: uvicorn's loggers go through the CLI's logging setup (-v shows each request).
        config = uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=10)
        server = Server(config, on_listen=announce, on_stop=app.state.worker.cancel_all)
        with suppress(KeyboardInterrupt):  # uvicorn raises the signal again once it has stopped
            server.run(sockets=[sock])
    echo_err("Stopped.")
