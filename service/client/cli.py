"""The command line: ``python -m service.client "hi"`` prints the reply as it streams."""

from __future__ import annotations

import argparse
import json
import os
import sys

from service.client.errors import ChatClientError, ContextTooLong
from service.client.events import Metadata, StreamError, Token
from service.client.session import ChatClient


def _sentence(text: str) -> str:
    text = text.strip() or "The request failed"
    return text if text.endswith((".", "!", "?")) else text + "."


def main(argv: list[str] | None = None) -> int:
    """The command line: print the reply as it streams; exit 0 on ``done``, 1 on any error."""
    parser = argparse.ArgumentParser(prog="python -m service.client", description="Chat with the service.")
    parser.add_argument("message")
    parser.add_argument("--url", default=os.environ.get("CHAT_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("CHAT_TOKEN"))
    parser.add_argument("--conversation", help="continue this conversation id")
    parser.add_argument("--model")
    parser.add_argument("--json", action="store_true", help="print each event as one JSON line")
    parser.add_argument("--no-stream", action="store_true", help="ask for the whole reply at once")
    parser.add_argument("--transport", choices=("sse", "ws"), default="sse", help="ws: stream over a WebSocket")
    args = parser.parse_args(argv)
    with ChatClient(args.url, args.token, transport=args.transport) as client:
        try:
            if args.no_stream:
                result = client.chat(args.message, args.conversation, args.model)
                print(json.dumps(result.raw) if args.json else result.content, flush=True)
                return 0
            for event in client.stream(args.message, args.conversation, args.model):
                if args.json:
                    print(json.dumps(event.raw), flush=True)
                elif isinstance(event, Metadata) and event.omitted_turns:
                    print(f"({event.omitted_turns} earlier messages left out to fit the model)", file=sys.stderr)
                elif isinstance(event, Token):
                    print(event.content, end="", flush=True)
                if isinstance(event, StreamError):
                    print("" if args.json else "\n", end="", flush=True)
                    print(_sentence(event.message), file=sys.stderr)
                    return 1
            if not args.json:
                print(flush=True)
            return 0
        except ContextTooLong as error:
            print(_sentence(error.message), file=sys.stderr)
            print("Start a new conversation (leave out --conversation) or send a shorter message.", file=sys.stderr)
            return 1
        except ChatClientError as error:
            print(_sentence(error.message), file=sys.stderr)
            return 1
        except BrokenPipeError:
            # the reader went away (``| head``): stop quietly, and keep Python from complaining at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
