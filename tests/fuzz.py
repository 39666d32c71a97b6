"""A recipe fuzzer: mutated recipes and strategies through `autopar profile / estimate / plan`.

Each case is a recipe file (a valid recipe with one mutation: a leaf replaced by a hostile
value, a key dropped or misspelt, a capitalised unknown key, or a file-level corruption:
non-UTF-8 bytes, truncation, deep nesting, an alias bomb) and a command line. `run_case`
calls the CLI in-process and classifies the outcome: ok (exit 0, or exit 2 with one short
line), traceback, hang (over the time limit), bad-exit, long-error, non-finite JSON.

tests/test_fuzz.py runs a fixed-seed sample in CI; `python benchmarks/fuzz.py N` runs more
and prints the counts.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autopar.cli.main import main

BASES: list[dict[str, Any]] = [
    {"model": {"family": "gpt", "layers": 2, "hidden": 32, "heads": 4, "seq_len": 16, "vocab": 64},
     "data": {"samples": 100}, "training": {"global_batch": 8, "optimizer": "adam", "precision": "fp32"},
     "cluster": {"preset": "cpu-local", "nodes": 1}},
    {"model": {"family": "mlp", "input_dim": 16, "widths": [32, 32], "classes": 4},
     "data": {"samples": 64}, "training": {"global_batch": 16, "lr": 0.1},
     "cluster": {"device": {"name": "gpu", "memory_GB": 16, "peak_tflops": {"fp32": 10}, "memory_bandwidth_GBps": 500},
                 "nodes": 2, "devices_per_node": 2, "intra_node": {"bandwidth_GBps": 100, "latency_us": 5},
                 "inter_node": {"bandwidth_GBps": 10}}},
    {"model": {"family": "cnn", "depth": 2, "width": 8, "image_size": 8, "classes": 4},
     "data": {"samples": 32}, "training": {"global_batch": 8}, "cluster": {"preset": "dgx-a100-80gb", "nodes": 1}},
    {"model": {"module": "tests.fixtures.user_models:two_tower", "kwargs": {"query_dim": 8, "item_dim": 6, "hidden": 16},
               "inputs": [{"shape": [8]}, {"shape": [6]}]},
     "data": {"samples": 32}, "training": {"global_batch": 4}, "cluster": {"preset": "cpu-local"}},
]

HOSTILE: list[Any] = [
    0, -1, 1, 2**31, 2**63 + 1, 10**30, float("nan"), float("inf"), -float("inf"), 1e308, 1e-308, 0.5, True, None, "",
    "lots", "٢", "２", [], [[[1]]], {}, {"x": 1}, "gpt", ["gpt"], "__BIGINT__", "x" * 10_000,
]
STRATEGIES = ["dp=2", "tp=2", "pp=2,microbatch=1", "dp=2,zero=3", "threads=2", "dp=2,tp=2", "pp=2,stages=1x100000000",
              "dp=٢", "dp=２", "dp=0", "dp=-1", "tp=10000000000000000000000", "microbatch=3", "schedule=interleaved",
              "virtual_stages=2", "dp=2,sync=async,sync_every=4", "recompute=full", "sequence_parallel=true", "", ",,",
              "dp", "dp=2=3", "zero=9", "stages=1x10000000"]


@dataclass(frozen=True)
class Case:
    text: bytes  # the recipe file
    argv: tuple[str, ...]  # after the file name


@dataclass(frozen=True)
class Outcome:
    kind: str  # ok | traceback | hang | bad-exit | long-error | non-finite-json
    detail: str


def _leaves(node: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [path] + [p for k, v in node.items() for p in _leaves(v, path + (k,))]
    if isinstance(node, list):
        return [path] + [p for i, v in enumerate(node) for p in _leaves(v, path + (i,))]
    return [path]


def _set(node: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = node
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = value
    return node


def _dump(recipe: Any) -> bytes:
    """YAML text; the "__BIGINT__" leaf becomes a 5,000-digit integer (too long for str(int))."""
    text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    return text.replace("__BIGINT__", "1" + "0" * 5000).encode()


def make_case(rng: random.Random) -> Case:
    recipe = json.loads(json.dumps(rng.choice(BASES)))
    kind = rng.random()
    if kind < 0.55:  # one leaf replaced
        path = rng.choice(_leaves(recipe))
        recipe = _set(recipe, path, rng.choice(HOSTILE))
        text = _dump(recipe)
    elif kind < 0.7:  # a key dropped, misspelt or added
        path = rng.choice([p for p in _leaves(recipe) if p and isinstance(p[-1], str)])
        parent = recipe
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        value = parent.pop(key)
        choice = rng.random()
        if choice < 0.4:
            parent[key.upper()] = value
        elif choice < 0.7:
            parent[key + "x"] = value
        text = _dump(recipe)
    else:  # the file itself
        good = _dump(recipe)
        choice = rng.randrange(6)
        if choice == 0:
            text = good[: rng.randrange(1, len(good))]
        elif choice == 1:
            text = good + b"\n# \xff\xfe\xc3\x28 not utf-8\n"
        elif choice == 2:
            depth = rng.choice([100, 2000, 50_000])
            text = b"model: " + b"[" * depth + b"]" * depth + b"\n"
        elif choice == 3:  # billion laughs
            lines = [b"a: &a [x, x, x, x, x, x, x, x, x, x]"]
            for i in range(1, 9):
                prev, cur = chr(ord("a") + i - 1).encode(), chr(ord("a") + i).encode()
                lines.append(cur + b": &" + cur + b" [" + b", ".join([b"*" + prev] * 10) + b"]")
            text = b"\n".join(lines) + b"\nmodel: *i\n"
        elif choice == 4:
            text = b"- just\n- a list\n"
        else:
            text = b"model: {family: gpt\n  broken: [\n"
    command = rng.choice(["profile", "estimate", "plan"])
    argv: tuple[str, ...] = (command,)
    if command == "estimate":
        argv += ("--strategy", rng.choice(STRATEGIES))
    if command == "plan":
        argv += ("--top", "1") + (("--fix", rng.choice(STRATEGIES)) if rng.random() < 0.3 else ())
    if rng.random() < 0.4:
        argv += ("--json",)
    return Case(text, argv)


class _Hang(BaseException):  # not an Exception: passes the CLI's catch-all
    pass


def _alarm(signum, frame):
    raise _Hang()


def _strict(value: str):
    raise ValueError(f"non-finite number {value} in JSON output")


def warm_up(workdir: Path) -> None:
    """Import and trace once, outside the hang alarm, each base recipe through every command:
    an alarm firing inside torch's first lazy imports (seconds on a loaded machine) leaves its
    operator registry half-built, and every later call then fails (seen: 'Only a single
    TORCH_LIBRARY can be used to register the namespace triton', then a segfault)."""
    for base in BASES:
        path = workdir / "warm.yaml"
        path.write_bytes(_dump(base))
        for argv in (["profile", "--json"], ["estimate", "--strategy", "dp=2", "--json"], ["plan", "--top", "1", "--json"]):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                main([argv[0], str(path), *argv[1:]])


def run_case(case: Case, workdir: Path, limit_s: float = 10.0) -> Outcome:
    path = workdir / "recipe.yaml"
    path.write_bytes(case.text)
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([case.argv[0], str(path), *case.argv[1:]])
    except _Hang:
        return Outcome("hang", " ".join(case.argv))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 2
    except BaseException as e:  # noqa: BLE001 - what the fuzzer is looking for
        return Outcome("traceback", f"{type(e).__name__}: {str(e)[:200]}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    stderr = err.getvalue()
    if code not in (0, 2):
        return Outcome("bad-exit", f"exit {code}: {stderr[:200]}")
    if "Traceback" in stderr:
        return Outcome("traceback", stderr[-300:])
    if code == 2:
        lines = stderr.strip().splitlines()
        if len(lines) != 1 or len(lines[0]) > 600:
            return Outcome("long-error", f"{len(lines)} lines, {len(stderr)} chars: {stderr[:200]}")
    if code == 0 and "--json" in case.argv:
        try:
            json.loads(out.getvalue(), parse_constant=_strict)
        except ValueError as e:
            return Outcome("non-finite-json", str(e)[:200])
    return Outcome("ok", "")
