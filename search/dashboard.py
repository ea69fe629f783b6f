"""``python -m search.dashboard --study NAME``: optuna-dashboard on the study's storage, for an SSH tunnel.

The server binds to 127.0.0.1 by default: on a shared GPU box the dashboard (which has no login and can
edit studies) is reached from a laptop through ``ssh -L``; the command prints that exact line.
"""
from __future__ import annotations

import argparse
import signal
import sys
from socketserver import ThreadingMixIn
from typing import Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard

from search._cli import UserError, add_study_arguments, run_command
from search.study.locate import locate_args
from search.study.record import redact
from search.study.storage import open_storage
from search.views.tunnel import LOCAL_HOSTS, tunnel_line


class _ThreadedWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow plot request never blocks the page (as optuna-dashboard's CLI)."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        pass  # the dashboard polls every few seconds; one access line per poll would bury the tunnel line


def make_dashboard_server(storage: optuna.storages.BaseStorage, host: str = "127.0.0.1",
                          port: int = 8080, artifact_store: object | None = None) -> WSGIServer:
    """A (not yet serving) HTTP server running optuna-dashboard's WSGI app on ``storage`` (listing the trials'
    files from ``artifact_store``); port 0 picks a free one."""
    app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)
    return make_server(host, port, app, server_class=_ThreadedWSGIServer, handler_class=_QuietHandler)


def study_url(host: str, port: int, study_id: int) -> str:
    """The browser address of the study's page (through the tunnel when bound locally)."""
    shown = "localhost" if host in LOCAL_HOSTS or host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}/dashboard/studies/{study_id}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search.dashboard", description=__doc__.splitlines()[0])
    add_study_arguments(parser)
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0 = any free)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; anything else exposes an unauthenticated dashboard)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints the address and the tunnel line, then serves until Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: expected 0..65535")
    return run_command(lambda: _serve(args), writes={"--studies-dir": args.studies_dir, "--artifacts": args.artifacts})


def _serve(args: argparse.Namespace) -> int:
    location = locate_args(args)
    storage_url = location.open().url
    artifacts = location.artifact_store()
    storage = open_storage(storage_url)  # readers pass no heartbeat: only workers own trials
    try:
        server = make_dashboard_server(storage, args.host, args.port, artifact_store=artifacts)
    except OSError as error:  # port taken, address not on this machine, ...
        raise UserError(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}") from None
    port = server.server_address[1]
    # Ctrl-C is the normal way to stop (also when the shell that started it ignored SIGINT, e.g. nohup or a
    # background job); SIGTERM (kill, tmux kill-session) stops it the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.default_int_handler(signum, frame))
    try:  # Ctrl-C is the normal way to stop, also while the banner is still printing
        if args.host not in LOCAL_HOSTS:
            print(f"WARNING: the dashboard is bound to {args.host}:{port} and has no authentication: anyone "
                  "who can reach that address can read, edit and delete studies. Prefer the default "
                  "127.0.0.1 with an SSH tunnel.", file=sys.stderr)
        print(f"optuna-dashboard for study {location.name!r} on {redact(storage_url)}")
        print(f"  open: {study_url(args.host, port, storage.get_study_id_from_name(location.name))}")
        print(f"  from your laptop, first: {tunnel_line(port, host=args.host)}")
        print("  stop: Ctrl-C", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
