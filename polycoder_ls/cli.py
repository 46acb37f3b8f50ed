"""Command line: the language server (stdio or TCP) and `complete` for one cursor."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

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
    commands = parser.add_subparsers(dest="command", metavar="{complete,eval,train}")
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
        help="perplexity and hole completion for PATHs, or HumanEval (--humaneval)",
        description="Score a model on source files: perplexity per model token and per "
        "Pygments token (each file on its own, non-overlapping windows), and hole completion "
        "through the real server over LSP. Languages by file extension (or a folder named after "
        "the language). Or, with --humaneval, HumanEval's 164 problems as the PolyCoder paper "
        "ran them (pass@k per temperature; every program executed in a sandbox) and infilling "
        "variants for FIM models. Prints a markdown table; a progress bar goes to stderr.",
    )
    evaluate.add_argument("paths", metavar="PATH", nargs="*", type=Path)
    evaluate.add_argument("--model")
    evaluate.add_argument("--device")
    evaluate.add_argument("--dtype")
    evaluate.add_argument("--context-tokens", type=int, help="window and prompt size (2048)")
    evaluate.add_argument("--json", type=Path, help="also write the results as JSON here")
    evaluate.add_argument("--limit", type=int, help="at most N files per language")
    evaluate.add_argument(
        "--holes", type=int, default=4, help="holes per file for hole completion (0: none)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the hole sampling")
    evaluate.add_argument(
        "--repository-holes",
        type=int,
        default=2,
        help="repository-level holes per file: lines that use a name another file of the "
        "project defines (2)",
    )
    evaluate.add_argument(
        "--ablate",
        action="store_true",
        help="hole completion with and without FIM and other-file context",
    )
    evaluate.add_argument("--fim", help="the fim setting: auto, off, or a JSON template")
    evaluate.add_argument(
        "--other-files-tokens", type=int, help="the context.otherFilesTokens setting (512)"
    )
    evaluate.add_argument(
        "--humaneval", action="store_true", help="run HumanEval instead (no PATHs)"
    )
    evaluate.add_argument(
        "--samples", type=int, default=10, help="HumanEval: completions per problem (10)"
    )
    evaluate.add_argument(
        "--temperatures",
        default="0.2,0.6,0.8",
        help="HumanEval: comma-separated sampling temperatures (0.2,0.6,0.8; 0: greedy)",
    )
    _add_train_parser(commands)
    return parser


def _add_train_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a small code model on your source trees, or fine-tune one",
        description="Train a GPT-NeoX code model (PolyCoder's architecture, scaled down) from "
        "scratch on the source files under --data, or fine-tune --init on them; one file in 20 "
        "per language is held out (or the files under --heldout) and its perplexity is reported "
        "before and after. Writes the model, its tokenizer, training-log.csv, training.json and "
        "checkpoints to --out; the result loads with --model OUT.",
    )
    train.add_argument("--data", type=Path, nargs="+", required=True, metavar="DIR")
    train.add_argument("--out", type=Path, required=True, metavar="DIR")
    train.add_argument("--init", metavar="MODEL", help="fine-tune this model (nano, a path...)")
    train.add_argument("--heldout", type=Path, nargs="+", metavar="DIR")
    train.add_argument("--minutes", type=float, default=60.0, help="time budget (default 60)")
    train.add_argument("--steps", type=int, help="train this many steps instead of by time")
    train.add_argument("--device", default="auto")
    train.add_argument("--seq-len", type=int, default=512)
    train.add_argument("--vocab-size", type=int, default=8192)
    train.add_argument("--layers", type=int, default=6)
    train.add_argument("--hidden", type=int, default=256)
    train.add_argument("--heads", type=int, default=8)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--fim-rate",
        type=float,
        default=0.5,
        help="share of segments trained as fill-in-the-middle samples (default 0.5; 0: off)",
    )


def _configure_logging(log_file: Path | None, verbosity: int) -> None:
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity, 2)]
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if verbosity < 2:
        logging.getLogger("pygls").setLevel(logging.WARNING)


def _drop_library_handlers() -> None:
    """huggingface_hub and transformers add stderr handlers of their own when imported: each
    warning would be printed twice, once without our format (and never to --log-file)."""
    import huggingface_hub.utils.logging  # noqa: F401  (adds its handler on import)
    import transformers.utils.logging  # noqa: F401

    for name in ("huggingface_hub", "transformers"):
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.propagate = True


def _exit_at_once(code: int) -> NoReturn:
    """Leave without Python's teardown of torch and transformers (about a second here): the
    answer is written, nothing is left to clean up."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _parse_target(target: str) -> tuple[Path, int, int]:
    parts = target.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(f"expected FILE:LINE:COL, got {target!r}")
    path, line, column = parts[0], int(parts[1]), int(parts[2])
    if line < 1 or column < 1:
        raise ValueError("LINE and COL are 1-based")
    return Path(path), line, column


def _command_settings(args: argparse.Namespace) -> tuple[Settings, list[str]]:
    other_files = getattr(args, "other_files_tokens", None)
    overrides = {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "maxNewTokens": getattr(args, "max_new_tokens", None),
        "temperature": getattr(args, "temperature", None),
        "multiline": getattr(args, "multiline", None),
        "contextTokens": getattr(args, "context_tokens", None),
        "fim": _json_or_text(getattr(args, "fim", None)),
        "context": None if other_files is None else {"otherFilesTokens": other_files},
    }
    return apply_settings(
        Settings(), {key: value for key, value in overrides.items() if value is not None}
    )


def _json_or_text(value: str | None) -> Any:
    """A JSON object given on the command line (a `fim` template), else the text itself."""
    if value is None or not value.lstrip().startswith("{"):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


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
    if status.state != "ready":
        engine.stop(wait=True)
        return 1
    if status.fallback_from is not None:
        print(f"polycoder-ls complete: using the fallback model {status.model}", file=sys.stderr)
    document = Document(path.resolve().as_uri(), "", 0, text)
    cursor = cursor_at(document, document.offset_at(line - 1, column - 1, "utf-32"))
    future = engine.complete(str(path), cursor, settings)
    suggestion = future.result().suggestion
    engine.stop(wait=True)
    if suggestion is not None:
        sys.stdout.write(suggestion.text + "\n")
    return 0


def _temperatures(text: str) -> tuple[float, ...] | None:
    """The comma-separated temperatures, each checked as the `temperature` setting is."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        return None
    valid = all(not apply_settings(Settings(), {"temperature": value})[1] for value in values)
    return values if valid else None


def run_eval(args: argparse.Namespace) -> int:
    from .engine.loading import ModelLoadError
    from .evaluation.run import EvalOptions, evaluate, markdown_table, write_json

    settings, problems = _command_settings(args)
    if (args.limit is not None and args.limit < 1) or min(args.holes, args.repository_holes) < 0:
        problems.append("--limit must be at least 1, --holes and --repository-holes at least 0")
    if args.humaneval:
        return run_humaneval(args, settings, problems)
    if not args.paths:
        problems.append("give PATHs to score, or --humaneval")
    if problems:
        print("polycoder-ls eval: " + "; ".join(problems), file=sys.stderr)
        return 2
    options = EvalOptions(
        args.paths,
        settings,
        args.limit,
        args.holes,
        args.seed,
        args.repository_holes,
        args.ablate,
    )
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


def run_humaneval(args: argparse.Namespace, settings: Settings, problems: list[str]) -> int:
    from .engine.loading import ModelLoadError
    from .evaluation.humaneval import HumanEvalOptions, humaneval_markdown, run_humaneval
    from .evaluation.run import write_json

    temperatures = _temperatures(args.temperatures)
    if temperatures is None:
        problems.append("--temperatures takes numbers from 0 to 5, comma-separated")
    if args.samples < 1:
        problems.append("--samples must be at least 1")
    if args.paths:
        problems.append("--humaneval takes no PATHs")
    if problems or temperatures is None:
        print("polycoder-ls eval: " + "; ".join(problems), file=sys.stderr)
        return 2
    options = HumanEvalOptions(settings, args.samples, temperatures, args.limit, args.seed)
    try:
        result = run_humaneval(options)
    except ModelLoadError as error:
        print(f"polycoder-ls eval: {error}", file=sys.stderr)
        return 1
    if args.json is not None:
        write_json(result, args.json)
    sys.stdout.write(humaneval_markdown(result))
    return 0


def run_train(args: argparse.Namespace, started: float) -> int:
    from .engine.loading import ModelLoadError
    from .training.data import load_dataset
    from .training.loop import TrainOptions, train

    options = TrainOptions(
        out=args.out,
        init=args.init,
        minutes=args.minutes,
        steps=args.steps,
        seq_len=args.seq_len,
        vocab_size=args.vocab_size,
        layers=args.layers,
        hidden=args.hidden,
        heads=args.heads,
        learning_rate=args.learning_rate,
        device=args.device,
        seed=args.seed,
        fim_rate=args.fim_rate,
        started=started,
    )
    try:
        dataset = load_dataset(args.data, args.heldout)
        if not dataset.train or not dataset.held_out:
            raise ValueError("need source files of the 12 languages to train on and to hold out")
        report = train(options, dataset)
    except (FileNotFoundError, ValueError, OSError, ModelLoadError) as error:
        print(f"polycoder-ls train: {error}", file=sys.stderr)
        return 1
    print(
        f"held-out perplexity per token: {report['heldOutPerplexityBefore']:.3f} before, "
        f"{report['heldOutPerplexityAfter']:.3f} after ({report['steps']} steps, "
        f"{report['minutes']} min); model in {args.out}"
    )
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
    started = time.monotonic()
    args = _parser().parse_args(argv)
    _configure_logging(args.log_file, args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as transformers_logging

    _drop_library_handlers()
    transformers_logging.disable_progress_bar()
    if args.command in ("eval", "train"):
        transformers_logging.set_verbosity_error()  # whole files exceed the model's length
    if args.command == "complete":
        return _exit_at_once(run_complete(args))
    if args.command == "eval":
        return run_eval(args)
    if args.command == "train":
        return run_train(args, started)
    return run_server(args)


if __name__ == "__main__":
    sys.exit(main())
