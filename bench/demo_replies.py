"""Ask the local demo model 10 everyday questions twice and count the replies that loop.

A small model under llama-server's own sampling defaults can repeat one sentence until its slot's context is full
(about 2,000 tokens: ~50 s alone, 2 minutes beside 3 other replies on 2 cores). This starts llama-server through
``LocalModelServer`` (so with the service's defaults, tuned by the same ``LOCAL_MODEL_*`` variables) or uses
``--url``, sends the prompts with the service's default system prompt, 4 at a time (the server's slots), and prints
one row per reply: completion tokens, seconds, how often its most repeated sentence / short fragment occurs (3+ / 6+
is a loop) and whether it stopped at the token cap (finish_reason "length").

    .venv/bin/python -m bench.demo_replies                 # the service's defaults
    .venv/bin/python -m bench.demo_replies --baseline      # llama-server's own sampling, no cap: the "before"
    LOCAL_MODEL_DRY_MULTIPLIER=0 .venv/bin/python -m bench.demo_replies
    .venv/bin/python -m bench.demo_replies --url http://127.0.0.1:8080/v1 --model any
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from service.config import DEFAULT_SYSTEM_PROMPT, LOCAL_MODEL_NAME
from service.local_model import LocalModelOptions, LocalModelServer

PROMPTS = (
    "Tell me about baby sleep patterns",
    "How do I make a good cup of coffee?",
    "What should I pack for a weekend hike?",
    "How can I get better at remembering names?",
    "What are some easy vegetables to grow at home?",
    "How often should I water a cactus?",
    "Give me tips for a job interview",
    "How do I remove a red wine stain from a carpet?",
    "What is a healthy breakfast?",
    "How can I save money on groceries?",
)
BASELINE_MAX_TOKENS = 2048  # a slot's whole context at the defaults: a loop runs until it is full
LOOP_REPEATS = 3
FRAGMENT_LOOP_REPEATS = 6
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_LIST_MARKER = re.compile(r"^(?:[-*#>]+|\d+[.)])\s*")


@dataclass(frozen=True)
class Reply:
    prompt: str
    run: int
    text: str
    tokens: int
    seconds: float
    finish_reason: str

    @property
    def repeats(self) -> tuple[int, int]:
        return max_repeats(self.text)

    @property
    def loops(self) -> bool:
        sentences, fragments = self.repeats
        return sentences >= LOOP_REPEATS or fragments >= FRAGMENT_LOOP_REPEATS

    @property
    def capped(self) -> bool:
        return self.finish_reason == "length"


def max_repeats(text: str) -> tuple[int, int]:
    """How often the most frequent sentence of 3+ words occurs, and the most frequent shorter fragment.

    Pieces are split at sentence ends and line breaks, lower-cased, whitespace collapsed, list markers and
    markdown emphasis dropped. Short fragments ("1. **Tips:**") recur in a fine list, so they count as a loop
    only at ``FRAGMENT_LOOP_REPEATS``; a list that repeats one item ("27. **Chicken**") gets there quickly.
    """
    sentences: Counter[str] = Counter()
    fragments: Counter[str] = Counter()
    for piece in _SENTENCE_END.split(text):
        words = _LIST_MARKER.sub("", piece.strip()).lower().replace("*", "").replace("_", "").split()
        if len(words) >= 3:
            sentences[" ".join(words)] += 1
        elif words:
            fragments[" ".join(words)] += 1
    return max(sentences.values(), default=0), max(fragments.values(), default=0)


def without_sampling(options: LocalModelOptions) -> LocalModelOptions:
    """The options with every sampling flag and the reply cap left out: llama-server's own defaults."""
    return replace(
        options,
        max_tokens=None,
        temperature=None,
        top_p=None,
        min_p=None,
        repeat_penalty=None,
        repeat_last_n=None,
        dry_multiplier=None,
        dry_base=None,
        dry_allowed_length=None,
        dry_penalty_last_n=None,
    )


def ask(base_url: str, model: str, prompt: str, run: int, max_tokens: int | None) -> Reply:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
    }
    if max_tokens:
        body["max_tokens"] = max_tokens
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer local"},
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.load(response)
    seconds = time.monotonic() - started
    choice = answer["choices"][0]
    return Reply(
        prompt=prompt,
        run=run,
        text=choice["message"]["content"] or "",
        tokens=int(answer["usage"]["completion_tokens"]),
        seconds=seconds,
        finish_reason=str(choice["finish_reason"]),
    )


def run_all(base_url: str, model: str, runs: int, concurrency: int, max_tokens: int | None) -> list[Reply]:
    jobs = [(prompt, run) for run in range(1, runs + 1) for prompt in PROMPTS]
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(ask, base_url, model, prompt, run, max_tokens) for prompt, run in jobs]
        return [future.result() for future in futures]


def print_table(replies: list[Reply], wall: float) -> None:
    width = max(len(p) for p in PROMPTS)
    print(f"{'prompt':<{width}}  run  tokens  seconds  repeats  loop  cap")
    for r in replies:
        sentences, fragments = r.repeats
        print(
            f"{r.prompt:<{width}}  {r.run:>3}  {r.tokens:>6}  {r.seconds:>7.1f}  {sentences:>3}/{fragments:<3}"
            f"  {'LOOP' if r.loops else '-':>4}  {'CAP' if r.capped else '-':>3}"
        )
    n = len(replies)
    tokens = [r.tokens for r in replies]
    seconds = [r.seconds for r in replies]
    print(
        f"\n{sum(r.loops for r in replies)} of {n} loop, {sum(r.capped for r in replies)} of {n} hit the cap; "
        f"tokens median {statistics.median(tokens):.0f} max {max(tokens)} total {sum(tokens)}; "
        f"seconds median {statistics.median(seconds):.1f} max {max(seconds):.1f}; wall {wall:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an OpenAI-compatible base URL to use instead of starting llama-server")
    parser.add_argument("--model", default=LOCAL_MODEL_NAME, help="the model name sent (default %(default)s)")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help=f"start llama-server without the service's sampling flags and cap (the client asks for at most "
        f"{BASELINE_MAX_TOKENS} tokens)",
    )
    parser.add_argument("--runs", type=int, default=2, help="times each prompt is asked (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests at once (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, help="max_tokens sent with each request (default: none)")
    parser.add_argument("--show", type=int, default=2, help="sample replies to print (default %(default)s)")
    parser.add_argument("--replies", type=Path, help="write every reply to this file as JSON lines")
    args = parser.parse_args(argv)
    max_tokens = args.max_tokens or (BASELINE_MAX_TOKENS if args.baseline else None)

    server = None
    if args.url:
        base_url = args.url.rstrip("/")
    else:
        options = LocalModelOptions.from_env(os.environ)
        if args.baseline:
            options = without_sampling(options)
        server = LocalModelServer(options)
        server.start()
        base_url = server.base_url
        print("llama-server", " ".join(server.command()[1:]), file=sys.stderr)
    try:
        started = time.monotonic()
        replies = run_all(base_url, args.model, args.runs, args.concurrency, max_tokens)
        wall = time.monotonic() - started
    finally:
        if server is not None:
            server.stop()

    print_table(replies, wall)
    if args.replies:
        with args.replies.open("w") as out:
            for r in replies:
                out.write(json.dumps({**r.__dict__, "repeats": r.repeats}) + "\n")
    for r in [r for r in replies if not r.loops][: args.show]:
        print(f"\n--- {r.prompt} (run {r.run}, {r.tokens} tokens, {r.finish_reason})\n{r.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
