"""Command line: the language server (stdio or TCP) and `complete` for one cursor."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .config import Settings, apply_settings

log = logging.getLogger("polycoder_ls")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polycoder-ls",
        description="Language server for local PolyCoder code completions (ghost text).",
    )
    parser.add_argument("--version", action="version", version=f"polycoder-ls {__version__}")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="speak LSP over stdio (default)")
    transport.add_argument("--tcp", action="store_true", help="speak LSP over TCP")
    parser.add_argument("--host", default="127.0.0.1", help="TCP host (default: loopback)")
    parser.add_argument("--port", type=int, default=2087, help="TCP port (default: 2087)")
    parser.add_argument("--log-file", type=Path, help="write logs here instead of stderr")
    parser.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logs (-vv: debug)")
    commands = parser.add_subparsers(dest="command", metavar="{complete,eval}")
    complete = commands.add_parser(
        "complete", help="print the completion for FILE:LINE:COL (1-based) and exit"
    )
    complete.add_argument("target", metavar="FILE:LINE:COL")
    complete.add_argument("--model")
    complete.add_argument("--device")
    complete.add_argument("--dtype")
    complete.add_argument("--max-new-tokens", type=int)
    complete.add_argument("--temperature", type=float)
    complete.add_argument("--multiline", choices=["auto", "always", "never"])
    evaluate = commands.add_parser(
        "eval",
        help="perplexity per language and hole completion through the server, for PATHs",
        description="Score a model on source files: perplexity per model token and per "
        "Pygments token (each file on its own, non-overlapping windows), and hole completion "
        "through the real server over LSP. Languages by file extension (or a folder named after "
        "the language). Prints a markdown table; a progress bar goes to stderr.",
    )
    evaluate.add_argument("paths", metavar="PATH", nargs="+", type=Path)
    evaluate.add_argument("--model")
    evaluate.add_argument("--device")
    evaluate.add_argument("--dtype")
    evaluate.add_argument("--json", type=Path, help="also write the results as JSON here")
    evaluate.add_argument("--limit", type=int, help="at most N files per language")
    evaluate.add_argument(
        "--holes", type=int, default=4, help="holes per file for hole completion (0: none)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the hole sampling")
    return parser


def _configure_logging(log_file: Path | None, verbosity: int) -> None:
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity, 2)]
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if verbosity < 2:
        logging.getLogger("pygls").setLevel(logging.WARNING)


def _parse_target(target: str) -> tuple[Path, int, int]:
    parts = target.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(f"expected FILE:LINE:COL, got {target!r}")
    path, line, column = parts[0], int(parts[1]), int(parts[2])
    if line < 1 or column < 1:
        raise ValueError("LINE and COL are 1-based")
    return Path(path), line, column


def _command_settings(args: argparse.Namespace) -> tuple[Settings, list[str]]:
    overrides = {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "maxNewTokens": getattr(args, "max_new_tokens", None),
        "temperature": getattr(args, "temperature", None),
        "multiline": getattr(args, "multiline", None),
    }
    return apply_settings(
        Settings(), {key: value for key, value in overrides.items() if value is not None}
    )


def run_complete(args: argparse.Namespace) -> int:
    from .documents import Document, cursor_at
    from .engine import Engine

    try:
        path, line, column = _parse_target(args.target)
        text = path.read_text(encoding="utf-8")
    except (ValueError, OSError) as error:
        print(f"polycoder-ls complete: {error}", file=sys.stderr)
        return 2
    settings, problems = _command_settings(args)
    if problems:
        print("polycoder-ls complete: " + "; ".join(problems), file=sys.stderr)
        return 2
    engine = Engine()
    status = engine.load(settings).result()
    if status.error is not None:
        print(f"polycoder-ls complete: {status.error}", file=sys.stderr)
        engine.stop(wait=True)
        return 1
    document = Document(path.resolve().as_uri(), "", 0, text)
    cursor = cursor_at(document, document.offset_at(line - 1, column - 1, "utf-32"))
    future, _ = engine.complete(str(path), cursor, settings)
    suggestion = future.result().suggestion
    engine.stop(wait=True)
    if suggestion is not None:
        sys.stdout.write(suggestion.text + "\n")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from .engine.loading import ModelLoadError
    from .evaluation.run import EvalOptions, evaluate, markdown_table, write_json

    settings, problems = _command_settings(args)
    if (args.limit is not None and args.limit < 1) or args.holes < 0:
        problems.append("--limit must be at least 1 and --holes at least 0")
    if problems:
        print("polycoder-ls eval: " + "; ".join(problems), file=sys.stderr)
        return 2
    options = EvalOptions(args.paths, settings, args.limit, args.holes, args.seed)
    try:
        result = evaluate(options)
    except (FileNotFoundError, ModelLoadError) as error:
        print(f"polycoder-ls eval: {error}", file=sys.stderr)
        return 1
    if not result["languages"]:
        print("polycoder-ls eval: no source files of the 12 languages found", file=sys.stderr)
        return 1
    if args.json is not None:
        write_json(result, args.json)
    sys.stdout.write(markdown_table(result))
    return 0


def run_server(args: argparse.Namespace) -> int:
    from .engine import Engine
    from .server import create_server

    server = create_server(Engine(naive=args.naive))
    if args.tcp:
        log.info("listening on %s:%d", args.host, args.port)
        server.start_tcp(args.host, args.port)
    else:
        server.start_io()
    server.exit_now(0)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.log_file, args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if args.command == "eval":
        transformers_logging.set_verbosity_error()  # whole files exceed the model's length
    if args.command == "complete":
        return run_complete(args)
    if args.command == "eval":
        return run_eval(args)
    return run_server(args)


if __name__ == "__main__":
    sys.exit(main())
