"""How to run the local model's server: its size, its port and its sampling, read from ``LOCAL_MODEL_*``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.config import LOCAL_MODEL_NAME
from service.env import ConfigError, EnvReader


@dataclass(frozen=True)
class LocalModelOptions:
    """How to run llama-server.

    ``context`` is the KV cache in tokens across all slots: llama-server gives each
    of the ``slots`` parallel requests ``context // slots`` tokens. 8192 is the
    model's training context, so 4 slots get 2048 tokens each (enough for a chat
    turn plus trimmed history) for about 190 MB of f16 KV cache. One thread leaves
    the second core to gunicorn's workers; continuous batching still serves all
    slots at once.

    The sampling fields are llama-server's defaults for requests that leave them
    out (the service sends none); None leaves a flag out. With llama-server's own
    defaults SmolLM2-135M looped in 5-7 of 20 replies, repeating a sentence until
    its slot was full; with these, 0 of 120 (``python -m bench.demo_replies``).
    """

    model_path: Path | None = None
    threads: int = 1
    slots: int = 4
    context: int = 8192
    host: str = "127.0.0.1"
    port: int = 0
    model_name: str = LOCAL_MODEL_NAME
    # -n: the reply cap of a request without max_tokens (one with it wins), so a
    # loop the penalties miss ends within ~30 s, not at a full slot (~2,000 tokens).
    max_tokens: int | None = 512
    # SmolLM2's recommended 0.2 / 0.9: at 0.7 replies wandered off topic more.
    temperature: float | None = 0.2
    top_p: float | None = 0.9
    min_p: float | None = 0.05
    # Without the per-token penalty 4 in 20 looped: DRY's sequence breakers
    # (newline, ':', '"', '*') reset it at each line of a list.
    repeat_penalty: float | None = 1.1
    repeat_last_n: int | None = 64
    # DRY penalises a token extending a sequence already seen in the last
    # ``dry_penalty_last_n`` tokens (this build rejects -1) by multiplier *
    # base ** (length - allowed_length); without it 2 in 20 still looped.
    dry_multiplier: float | None = 0.8
    dry_base: float | None = 1.75
    dry_allowed_length: int | None = 2
    dry_penalty_last_n: int | None = 512

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LocalModelOptions:
        """Read ``LOCAL_MODEL_*``; a bad value raises ``ConfigError`` naming the variable."""
        env = EnvReader(environ)
        raw_path = env.optional("LOCAL_MODEL_PATH")
        model_path: Path | None = None
        if raw_path:
            model_path = Path(raw_path).expanduser()
            if not model_path.is_file():
                raise ConfigError(f"Config 'LOCAL_MODEL_PATH' must name a file, got {raw_path!r}.")
        slots = env.integer("LOCAL_MODEL_SLOTS", 4, minimum=1)
        context = env.integer("LOCAL_MODEL_CONTEXT", 8192, minimum=256)
        if context // slots < 128:
            raise ConfigError(
                f"Config 'LOCAL_MODEL_CONTEXT' ({context}) leaves under 128 tokens for each of the {slots} slots "
                "of 'LOCAL_MODEL_SLOTS'."
            )
        return cls(
            model_path=model_path,
            threads=env.integer("LOCAL_MODEL_THREADS", 1, minimum=1),
            slots=slots,
            context=context,
            port=env.integer("LOCAL_MODEL_PORT", 0, minimum=0, maximum=65535),
            max_tokens=env.integer("LOCAL_MODEL_MAX_TOKENS", 512, minimum=1),
            temperature=env.number("LOCAL_MODEL_TEMPERATURE", 0.2, minimum=0.0),
            top_p=env.number("LOCAL_MODEL_TOP_P", 0.9, minimum=0.0, maximum=1.0),
            min_p=env.number("LOCAL_MODEL_MIN_P", 0.05, minimum=0.0, maximum=1.0),
            repeat_penalty=env.number("LOCAL_MODEL_REPEAT_PENALTY", 1.1, minimum=0.0),
            repeat_last_n=env.integer("LOCAL_MODEL_REPEAT_LAST_N", 64, minimum=0),
            dry_multiplier=env.number("LOCAL_MODEL_DRY_MULTIPLIER", 0.8, minimum=0.0),
            dry_base=env.number("LOCAL_MODEL_DRY_BASE", 1.75, minimum=1.0),
            dry_allowed_length=env.integer("LOCAL_MODEL_DRY_ALLOWED_LENGTH", 2, minimum=1),
            dry_penalty_last_n=env.integer("LOCAL_MODEL_DRY_PENALTY_LAST_N", 512, minimum=0),
        )

    def command(self, binary: Path, model: Path, port: int) -> list[str]:
        """The llama-server command line."""
        return [
            str(binary),
            "--host", self.host,
            "--port", str(port),
            "-m", str(model),
            "-t", str(self.threads),
            "-np", str(self.slots),
            "-c", str(self.context),
            # Repacking picks AMX kernels on CPUs that advertise AMX; VMs that do
            # not grant it crash with "Illegal instruction".
            "--no-repack",
            "--alias", self.model_name,
            "--no-webui",  # the API is all we need, and the build embeds no UI
            "--no-slots",  # /slots would expose other users' prompts
            # Idle conversations' KV state is kept in RAM for reuse; the default cap
            # is 8 GiB. 256 MiB holds ~11k tokens of this model's history.
            "--cache-ram", "256",
            "--log-colors", "off",
            "--log-timestamps",
            *self._sampling_flags(),
        ]  # fmt: skip

    def _sampling_flags(self) -> list[str]:
        flags = {
            "-n": self.max_tokens,
            "--temp": self.temperature,
            "--top-p": self.top_p,
            "--min-p": self.min_p,
            "--repeat-penalty": self.repeat_penalty,
            "--repeat-last-n": self.repeat_last_n,
            "--dry-multiplier": self.dry_multiplier,
            "--dry-base": self.dry_base,
            "--dry-allowed-length": self.dry_allowed_length,
            "--dry-penalty-last-n": self.dry_penalty_last_n,
        }
        return [arg for flag, value in flags.items() if value is not None for arg in (flag, str(value))]
