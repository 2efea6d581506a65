"""The `zns-gate` command: `serve` runs the receiver, processor and API in one process;
`replay` rebuilds every OA's state from the event log; `simulate` sends realistic traffic
to a running service; `schemas` writes the JSON Schemas; `fake-zalo` serves a local Zalo
to develop and test against; `token status` shows the state of the OAs' Zalo tokens;
`config check` validates the settings and `config show` prints them (secrets masked);
`demo` posts a current signed receipt and rating to a running service and shows them
counted (exit 1 when they are not).
It parses arguments and reports; the work itself is done by the modules it calls.

Exit statuses: 0 after a clean shutdown, 2 when a setting is invalid (nothing
was started), 1 when the service could not start (a busy port among them) or stopped
on an error, 3 when the embedded log's database is in use by another process (a
running `zns-gate serve`): stop it first, or work on a copy of the file.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from service import __version__
from service.config import ConfigError, Settings, load_settings
from service.log.base import LogConfigError, LogError, LogInUse
from service.logsetup import configure_logging, get_logger

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID_SETTINGS = 2
EXIT_IN_USE = 3

MASK = "***"
"""What `config show` prints in place of every secret."""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {port}")
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zns-gate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"zns-gate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the webhook receiver, processor and API")
    serve.add_argument(
        "--config", metavar="FILE", help="TOML settings file (default: $ZNS_GATE_CONFIG)"
    )
    serve.add_argument("--host", help="listen on this address (overrides server.host)")
    serve.add_argument(
        "--port", type=_port, help="listen on this port, 0 for any free one (overrides server.port)"
    )
    config = commands.add_parser("config", help="validate or print the effective settings")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    config_check = config_commands.add_parser(
        "check", help="exit 0 if the settings are valid, else 2 naming each invalid setting"
    )
    config_show = config_commands.add_parser(
        "show", help="print the effective settings (file, environment, defaults); secrets masked"
    )
    for sub in (config_check, config_show):
        sub.add_argument(
            "--config", metavar="FILE", help="TOML settings file (default: $ZNS_GATE_CONFIG)"
        )
    config_show.add_argument(
        "--format", choices=["toml", "json"], default="toml", help="default: toml"
    )
    replay = commands.add_parser(
        "replay", help="rebuild every OA's state from the event log into fresh snapshots"
    )
    replay.add_argument(
        "--config", metavar="FILE", help="TOML settings file (default: $ZNS_GATE_CONFIG)"
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="fold and report, but write no snapshots"
    )
    replay.add_argument(
        "--dump", metavar="FILE", help="also write each rebuilt state as a JSON line to FILE"
    )
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    simulate = commands.add_parser(
        "simulate", help="send realistic traffic (admissions, sends, signed webhooks) to a service"
    )
    simulate.add_argument(
        "--target", required=True, help="the service's URL, e.g. http://127.0.0.1:8080"
    )
    simulate.add_argument("--oas", type=int, default=10, help="how many OAs (default 10)")
    simulate.add_argument("--rate", type=float, default=50.0, help="requests a second (default 50)")
    simulate.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    simulate.add_argument(
        "--negative-rate",
        type=float,
        default=0.05,
        help="the share of ratings that are negative (default 0.05)",
    )
    simulate.add_argument("--seed", type=int, default=1, help="the same seed, the same traffic")
    simulate.add_argument(
        "--config",
        metavar="FILE",
        help="settings whose first [[apps]] signs the webhooks (default: $ZNS_GATE_CONFIG)",
    )
    simulate.add_argument("--app-id", help="sign as this app (instead of the settings')")
    simulate.add_argument("--secret", help="with --app-id: its OA secret key")
    simulate.add_argument("--token", help="bearer token for /v1 (scope send)")
    simulate.add_argument("--record", metavar="FILE", help="one JSON line per request and answer")
    simulate.add_argument("--quiet", action="store_true", help="no progress bar")
    simulate.add_argument(
        "--via",
        choices=["admissions", "messages"],
        default="admissions",
        help="admissions: ask, report the send, post the receipt (default); messages: send "
        "through zns-gate (POST /messages) against fake-zalo, which posts the receipts",
    )
    simulate.add_argument(
        "--oa-id",
        action="append",
        metavar="ID",
        help="with --via messages: an OA whose token the service holds (repeat for more)",
    )
    demo = commands.add_parser(
        "demo",
        help="sign and post a current receipt and one-star rating, and show the OA's quality",
    )
    demo.add_argument(
        "--target", default="http://127.0.0.1:8080", help="default http://127.0.0.1:8080"
    )
    demo.add_argument(
        "--config",
        metavar="FILE",
        help="settings whose first [[apps]] signs the webhooks (default: $ZNS_GATE_CONFIG)",
    )
    demo.add_argument("--app-id", help="sign as this app (instead of the settings')")
    demo.add_argument("--secret", help="with --app-id: its OA secret key")
    demo.add_argument("--oa-id", default="388613280878808645", help="the OA the events name")
    demo.add_argument("--token", help="bearer token for /v1 (scope read)")
    fake = commands.add_parser(
        "fake-zalo", help="serve a local Zalo (OAuth, sends, reads, webhooks) to develop against"
    )
    fake.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    fake.add_argument("--port", type=int, default=9100, help="default 9100")
    fake.add_argument(
        "--gate",
        metavar="URL",
        help="post webhooks to URL/webhooks/zalo, e.g. http://127.0.0.1:8080",
    )
    fake.add_argument("--config", metavar="FILE", help="scenario TOML (default: a built-in one)")
    fake.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default INFO (DEBUG logs every send)",
    )
    token = commands.add_parser("token", help="the OAs' Zalo tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    token_status = token_commands.add_parser(
        "status", help="print each OA's token state as a JSON line (never a token)"
    )
    token_status.add_argument(
        "--config", metavar="FILE", help="TOML settings file (default: $ZNS_GATE_CONFIG)"
    )
    token_status.add_argument("--oa", metavar="OA", help="only this OA")
    backup = commands.add_parser(
        "backup", help="copy the embedded log's file, consistently, while the service runs"
    )
    backup.add_argument("--to", required=True, metavar="FILE", help="the copy (must not exist)")
    backup.add_argument(
        "--config", metavar="FILE", help="TOML settings file (default: $ZNS_GATE_CONFIG)"
    )
    schemas = commands.add_parser("schemas", help="write the JSON Schemas of every payload")
    schemas.add_argument("--out", metavar="DIR", default="schemas", help="default: ./schemas")
    schemas.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is out of date"
    )
    return parser


def _schemas(out: str, check: bool) -> int:
    from service import schemas

    root = Path(out)
    if check:
        stale = schemas.differences(root)
        for line in stale:
            print(line, file=sys.stderr)
        return EXIT_FAILED if stale else EXIT_OK
    for path in schemas.write(root):
        print(path)
    return EXIT_OK


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop of the kind the settings name."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _failed(exc: Exception, what: str) -> int:
    """Log why a command could not run; its exit status (3 when the embedded database is
    held by another process, 2 when the log's layout disagrees with the settings, else 1)."""
    log = get_logger("cli")
    if isinstance(exc, LogInUse):
        log.error(
            "the embedded database is in use by a running service; stop it first",
            error=str(exc),
        )
        return EXIT_IN_USE
    if isinstance(exc, LogConfigError):
        log.error("the event log disagrees with the settings", error=str(exc))
        return EXIT_INVALID_SETTINGS
    log.error(what, error=str(exc))
    return EXIT_FAILED


def _listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address `host` resolves to ("" for every interface of
    both IPv4 and IPv6), not yet listening: aiohttp listens on them once the application
    has started. Raises OSError when an address is taken or the name unknown."""
    found = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            # As asyncio's own servers do: a restart may bind while old connections
            # linger, and an IPv6 socket leaves IPv4 to its own socket.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(bound) > 1:
                # One name, one port: the kernel's choice for the first address.
                address = (address[0], bound[0].getsockname()[1], *address[2:])
            sock.bind(address)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


def _serve(settings: Settings) -> int:
    from service.app import build_app, freeze_what_started

    log = get_logger("cli")
    # Bind before anything opens the log: a busy port fails at once, without restoring
    # a single partition first.
    try:
        sockets = _listen(settings.server.host, settings.server.port)
    except OSError as exc:
        log.error(
            "could not listen",
            host=settings.server.host,
            port=settings.server.port,
            error=exc.strerror or str(exc),
        )
        return EXIT_FAILED
    bound_port: int = sockets[0].getsockname()[1]
    if bound_port != settings.server.port:
        # Port 0: the port the kernel chose is the one other instances must be told.
        server = settings.server.model_copy(update={"port": bound_port})
        settings = settings.model_copy(update={"server": server})
    if not settings.api.tokens:
        log.warning("no API tokens configured: the /v1 API is open to anyone who can reach it")
    if not settings.apps:
        log.warning("no [[apps]] configured: every webhook will be refused as unknown_app")
    if settings.log.backend == "kafka" and settings.api.cluster_secret is None:
        log.warning(
            "no api.cluster_secret: requests for OAs that other instances own get 503 "
            "forwarding_disabled; set the same secret on every instance to forward them"
        )
    app = build_app(settings)
    app.on_startup.append(freeze_what_started)
    log.info(
        "starting",
        version=__version__,
        host=settings.server.host,
        port=settings.server.port,
        backend=settings.log.backend,
    )
    try:
        # run_app stops listening on SIGTERM/SIGINT, lets running requests finish,
        # then runs the cleanup that flushes and closes the log.
        web.run_app(
            app,
            loop=new_event_loop(settings.server.event_loop),
            sock=sockets,
            shutdown_timeout=settings.server.shutdown_timeout_s,
            # aiohttp has no timeout for headers; its idle timeout runs from the
            # connection's start, or its last answer, until the next headers are complete.
            keepalive_timeout=settings.server.header_timeout_s,
            access_log=None,
            print=None,
            handle_signals=True,
        )
    except (LogError, OSError, sqlite3.Error) as exc:
        return _failed(exc, "could not start")
    finally:
        for sock in sockets:
            sock.close()
    log.info("stopped")
    return EXIT_OK


def _with_server(settings: Settings, host: str | None, port: int | None) -> Settings:
    """`settings` with `serve --host/--port` in place of server.host/port."""
    changes: dict[str, Any] = {}
    if host is not None:
        changes["host"] = host
    if port is not None:
        changes["port"] = port
    if not changes:
        return settings
    server = settings.server.model_copy(update=changes)
    return settings.model_copy(update={"server": server})


def _masked(value: Any) -> Any:
    """A dump of settings with every secret as `MASK`, and paths as text."""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _without_none(value: Any) -> Any:
    # TOML has no null: a setting left unset is left out, which reads back the same.
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_none(item) for item in value]
    return value


def _config_show(settings: Settings, form: Literal["toml", "json"]) -> int:
    import orjson
    import tomli_w

    shown = _masked(settings.model_dump(mode="python"))
    if form == "json":
        sys.stdout.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(tomli_w.dumps(_without_none(shown)))
    return EXIT_OK


def _backup(settings: Settings, target: Path) -> int:
    from service.log.backup import BackupError, backup

    if settings.log.backend != "embedded":
        print(
            "zns-gate: backup copies the embedded log's file; on Kafka the topics are the "
            "state (see docs/operations.md#backups-and-restore)",
            file=sys.stderr,
        )
        return EXIT_INVALID_SETTINGS
    try:
        report = backup(settings.log.path, target)
    except BackupError as exc:
        print(f"zns-gate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{report.target}: {report.size_bytes} bytes in {report.seconds:.2f} s")
    return EXIT_OK


def _replay(settings: Settings, dry_run: bool, dump: str | None, quiet: bool) -> int:
    import orjson
    from tqdm import tqdm

    from service.log import create_log
    from service.processor.replay import ReplayResult, replay, total_records

    async def run() -> ReplayResult:
        event_log = create_log(settings.log)
        await event_log.start()
        try:
            total = await total_records(event_log)
            with tqdm(
                total=total, unit="rec", disable=quiet, file=sys.stderr, desc="replay"
            ) as bar:
                return await replay(event_log, settings, write=not dry_run, progress=bar.update)
        finally:
            await event_log.close()

    try:
        with asyncio.Runner(loop_factory=lambda: new_event_loop(settings.server.event_loop)) as r:
            result = r.run(run())
    except (LogError, OSError, sqlite3.Error) as exc:
        return _failed(exc, "replay failed")
    if dump is not None:
        with open(dump, "wb") as out:
            for oa_id in sorted(result.states):
                document = {"oa_id": oa_id, "state": result.states[oa_id].to_document()}
                out.write(orjson.dumps(document) + b"\n")
    print(orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


def _signer(args: argparse.Namespace, settings: Settings, command: str) -> tuple[str, str] | None:
    """The app id and OA secret key that sign the webhooks: given, or the settings' first
    app's; None (and a message) when there is neither."""
    if args.app_id and args.secret:
        return args.app_id, args.secret
    if settings.apps:
        return settings.apps[0].app_id, settings.apps[0].secrets[0].get_secret_value()
    print(
        f"zns-gate: {command} needs --app-id and --secret, or [[apps]] in the settings",
        file=sys.stderr,
    )
    return None


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from service.demo import run

    signer = _signer(args, settings, "demo")
    if signer is None:
        return EXIT_INVALID_SETTINGS
    target = args.target.rstrip("/")
    try:
        steps = asyncio.run(run(target, *signer, args.oa_id, args.token, timeout_s=15))
    except (OSError, aiohttp.ClientError, TimeoutError) as exc:
        return _failed(exc, f"could not reach {target}")
    print(orjson.dumps(steps, option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK if steps["counted"] else EXIT_FAILED


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from service.simulate import run

    signer = _signer(args, settings, "simulate")
    if signer is None:
        return EXIT_INVALID_SETTINGS
    try:
        summary = run(args, *signer)
    except ValueError as exc:
        print(f"zns-gate: {exc}", file=sys.stderr)
        return EXIT_INVALID_SETTINGS
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


def _fake_zalo(args: argparse.Namespace) -> int:
    from service.zalo.fake import ScenarioError, build_fake_app, default_scenario, load_scenario

    try:
        scenario = default_scenario() if args.config is None else load_scenario(args.config)
    except ScenarioError as exc:
        print(f"zns-gate: {exc}", file=sys.stderr)
        return EXIT_INVALID_SETTINGS
    configure_logging(args.log_level)
    log = get_logger("fake_zalo")
    log.info(
        "starting",
        host=args.host,
        port=args.port,
        gate=args.gate,
        oas=[oa.oa_id for oa in scenario.oas],
        templates=len(scenario.templates),
    )
    try:
        # run_app stops on SIGINT/SIGTERM and runs the cleanup that cancels pending webhooks.
        web.run_app(
            build_fake_app(scenario, gate=args.gate),
            host=args.host,
            port=args.port,
            access_log=None,
            print=None,
            handle_signals=True,
            shutdown_timeout=2.0,
        )
    except OSError as exc:
        return _failed(exc, "could not start")
    log.info("stopped")
    return EXIT_OK


def _token_status(settings: Settings, oa_id: str | None) -> int:
    import orjson

    from service.log import create_log
    from service.zalo.tokens import read_tokens
    from service.zalo.vault import TokenStatus, Vault

    try:
        vault = Vault(settings.zalo.key())
    except ConfigError as exc:
        print(f"zns-gate: {exc}", file=sys.stderr)
        return EXIT_INVALID_SETTINGS

    async def run() -> dict[str, TokenStatus]:
        log = create_log(settings.log)
        await log.start()
        try:
            found, _ = await read_tokens(log, vault)
        finally:
            await log.close()
        now_ms = int(time.time() * 1000)
        margin = settings.zalo.refresh_margin_s
        return {oa: TokenStatus.of(oa, token, now_ms, margin) for oa, token in found.items()}

    try:
        statuses = asyncio.run(run())
    except (LogError, OSError, sqlite3.Error) as exc:
        return _failed(exc, "could not read the tokens")
    wanted = sorted(statuses) if oa_id is None else [oa_id]
    for oa in wanted:
        status = statuses.get(oa) or TokenStatus(oa, None, "missing")
        sys.stdout.write(orjson.dumps(status.answer()).decode() + "\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schemas":
        return _schemas(args.out, args.check)
    if args.command == "fake-zalo":
        # The fake reads a scenario, not the gate's settings.
        return _fake_zalo(args)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"zns-gate: {exc}", file=sys.stderr)
        return EXIT_INVALID_SETTINGS
    if args.command == "config":
        if args.config_command == "check":
            print("settings are valid")
            return EXIT_OK
        return _config_show(settings, args.format)
    configure_logging(settings.log_level)
    if args.command == "serve":
        return _serve(_with_server(settings, args.host, args.port))
    if args.command == "replay":
        return _replay(settings, args.dry_run, args.dump, args.quiet)
    if args.command == "simulate":
        return _simulate(args, settings)
    if args.command == "demo":
        return _demo(args, settings)
    if args.command == "token":
        return _token_status(settings, args.oa)
    if args.command == "backup":
        return _backup(settings, Path(args.to))
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse refuses others


if __name__ == "__main__":
    sys.exit(main())
