"""`cai review import | export | stats | serve`: people's review decisions as JSONL, thin commands over
`cai.read.run.Run` (cai.cli.commands registers the group), `cai review stats` over `cai.read.review_stats`, and the
review page (`cai.review.server`) served with uvicorn, which only the CLI runs (it installs signal handlers).
The library is imported inside the commands, so that `cai --help` starts fast."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Optional

import typer

from cai.cli.kit import fails_cleanly, say
from cai.errors import InputError

HELP = {"help_option_names": ["-h", "--help"]}
review_app = typer.Typer(no_args_is_help=True, context_settings=HELP,
                         help="People's review decisions on a run's critiques and pairs, kept in the run folder "
                              "(reviews.sqlite). See docs/review.md.\n\n"
                              "Example: cai review export runs/demo -o reviews.jsonl")
RunDir = Annotated[Path, typer.Argument(help="A run folder, e.g. runs/demo.")]


@review_app.command("import")
@fails_cleanly
def review_import(
    run_dir: RunDir,
    file: Annotated[Path, typer.Argument(help="A JSONL file of decisions, one a line (docs/review.md).")],
) -> None:
    """Store the decisions of a JSONL file: every line is checked first and nothing is stored from a bad file;
    importing the same file again changes nothing. Works while the run is being written.

    Example: cai review import runs/demo reviews.jsonl
    """
    from cai.api import open_run

    changed = open_run(run_dir).import_reviews(file)
    say(f"{file}: {changed} decision{'s' if changed != 1 else ''} added or changed in {run_dir}")


@review_app.command("export")
@fails_cleanly
def review_export(
    run_dir: RunDir,
    output: Annotated[Path, typer.Option("--output", "-o", help="The JSONL file to write.")],
) -> None:
    """Write every decision of a run to a JSONL file, one a line, with the hash of the text it was about.

    Example: cai review export runs/demo -o reviews.jsonl
    """
    from cai.api import open_run

    n = open_run(run_dir).export_reviews(output)
    say(f"wrote {output}: {n} decision{'s' if n != 1 else ''}")


@review_app.command("stats")
@fails_cleanly
def review_stats(
    run_dir: RunDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print every figure as JSON.")] = False,
) -> None:
    """How far people agree with the critic, the judge and each other, from the run's current decisions
    (stale ones left out and counted). See docs/review_stats.md.

    Example: cai review stats runs/demo --json
    """
    from cai.api import open_run
    from cai.cli.kit import emit

    stats = open_run(run_dir).review_stats()
    if as_json:
        emit(stats)
        return
    d = stats["decisions"]
    say(f"{run_dir}: {d['used']} decisions used ({d['stale']} stale, {d['superseded']} superseded, "
        f"{d['unmatched']} about items the run no longer has)")
    figures = [(f"the critic's {name.replace('_', ' ')} verdicts people agreed with", part)
               for name, part in stats["critic"]["overall"].items()]
    figures += [("revision pairs where people preferred the revision", stats["revision"]["preferred_revision"]),
                ("AI-labeled pairs where the judge agreed with people", stats["judge"]["agreement"])]
    for what, part in figures:
        if part["n"]:
            low, high = part["ci95"]
            say(f"  {what}: {part['k']} of {part['n']} ({part['share']:.0%}, 95% CI {low:.0%}–{high:.0%})")


@review_app.command("serve")
@fails_cleanly
def review_serve(
    run_dir: RunDir,
    reviewer: Annotated[Optional[str], typer.Option(help="Your name on the decisions (default: your login name).")]
    = None,
    sample: Annotated[Optional[int], typer.Option(help="Review a seeded sample of N records, spread evenly over "
                                                       "the principles of their first critique round.")] = None,
    seed: Annotated[int, typer.Option(help="The seed of the sample and of the overlap.")] = 0,
    only: Annotated[Optional[list[str]], typer.Option(help="Only records with a critique on principle=ID, with a "
                                                           "violation found (violated), or with AI-labeled pairs "
                                                           "(ai_label); repeat to combine.")] = None,
    overlap: Annotated[int, typer.Option(help="Add K records others already reviewed (blind), to measure "
                                              "agreement between people.")] = 0,
    port: Annotated[int, typer.Option(help="The port (0: a free one).")] = 0,
    host: Annotated[str, typer.Option(help="The address to listen on; another than loopback needs "
                                           "--allow-remote.")] = "127.0.0.1",
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Allow --host to be an address that other "
                                                                      "machines reach.")] = False,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser.")] = False,
) -> None:
    """Review a run in the browser: one record at a time, one key per decision. Prints the page's URL, with its
    access token, as the first line on stdout; Ctrl-C stops it. Only decisions are written (reviews.sqlite), also
    while the run is being written. See docs/review.md.

    Example: cai review serve runs/demo --sample 50 --seed 1
    """
    try:
        import uvicorn

        from cai.review.server import allowed_hosts, create_app, new_token
        from cai.review.session import ReviewSession
    except ModuleNotFoundError as e:
        if e.name not in ("starlette", "uvicorn"):
            raise
        raise InputError(f"the review page needs the 'review' extra: pip install 'cai[review]' ({e.name} is not "
                         "installed)") from None
    loopback = host in LOOPBACK
    if not loopback and not allow_remote:
        raise InputError(f"--host {host} lets other machines reach the review page: add --allow-remote to mean it")
    session = ReviewSession(run_dir, reviewer or _login_name(), sample=sample, seed=seed, only=only or [],
                            overlap=overlap)
    sock = _listen("127.0.0.1" if host == "localhost" else host, port)
    real_port = sock.getsockname()[1]
    token = new_token()
    shown = "127.0.0.1" if host in ("0.0.0.0", "localhost") else f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{real_port}/?token={token}"
    app = create_app(session, token, allowed_hosts(host, real_port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    try:
        print(url, flush=True)
        if not loopback:
            say(f"warning: the review page listens on {host}:{real_port}, reachable from other machines; only "
                "its token keeps them out, and traffic is not encrypted")
        say(f"reviewing {run_dir} as {session.reviewer}: {len(session)} records in the queue; Ctrl-C stops")
        if not no_browser:
            import webbrowser

            webbrowser.open(url)
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C before the server took the signals over, or the one it passed on
        pass
    say(f"stopped; every decision saved is in {run_dir}/reviews.sqlite")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _login_name() -> str:
    """$USER, else the login name; InputError where neither is known."""
    import getpass
    import os

    try:
        return os.environ.get("USER") or getpass.getuser()
    except (OSError, KeyError):
        raise InputError("cannot tell who you are: give --reviewer NAME") from None


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), ready for the server; InputError (one line) when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)  # connections wait in the backlog from now on, before the server takes them
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock
