"""The Dockerfile builds, and its container serves a stream, for real, with Debian's podman.

No image registry can be reached from these machines, so the base is made from Debian's packages (mmdebstrap,
imported as a local image) and given to the Dockerfile as its ``BASE``. podman's storage is kept between runs in
``IMAGE_CACHE`` (the base and the dependency layer are then reused). The flags fit this kind of machine: runc
(crun refuses its mixed cgroup layout), cgroupfs, file events, and limits below what the sandbox may raise.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fake_upstream import FakeUpstream
from tests.servers import ROOT, free_port

CACHE = Path(os.environ.get("IMAGE_CACHE", "/var/tmp/chat-gateway-image"))
BASE = "localhost/chat-gateway-base:bookworm"
IMAGE = "localhost/chat-gateway:test"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # pip inside the build goes out through the same proxy
DEBIAN = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]


def podman_command(*args: str) -> list[str]:
    command = ["podman", "--root", str(CACHE / "storage"), "--runroot", str(CACHE / "run")]
    command += ["--storage-driver", "overlay", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    return [*command, "--runtime", "runc", *args]


def podman(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(podman_command(*args), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args[:2])}: {done.stderr[-3000:]}"
    return done


def limits() -> list[str]:
    """The container's limits: at most the sandbox's own hard ones (it may not raise them)."""
    hard_files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return ["--ulimit", f"nofile={hard_files}:{hard_files}", "--ulimit", "nproc=32768:32768"]


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None or shutil.which("mmdebstrap") is None:
        pytest.fail("podman and mmdebstrap are missing: the test command installs them (scripts/test)")
    CACHE.mkdir(parents=True, exist_ok=True)
    if podman("images", "--quiet", BASE).stdout.strip() == "":
        rootfs = CACHE / "rootfs.tar"
        packages = "--include=python3,python3-venv,ca-certificates,passwd"
        subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=apt", packages, "bookworm", str(rootfs), *DEBIAN], check=True
        )
        podman("import", "--change", "ENV LANG=C.UTF-8", str(rootfs), BASE)
        rootfs.unlink()
    build = ["build", "--format", "docker", "--build-arg", f"BASE={BASE}", "--tag", IMAGE]
    if HOST_CA.exists():
        build += ["--volume", f"{HOST_CA}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    podman(*build, str(ROOT))
    return IMAGE


@pytest.fixture
def container(image: str, upstream: FakeUpstream) -> Iterator[tuple[str, str]]:
    name, port = f"chat-gateway-{uuid.uuid4().hex[:8]}", free_port()
    settings = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "test-key", "CHAT_MODEL": "test-model"}
    environment = [item for key, value in {**settings, "PORT": str(port)}.items() for item in ("-e", f"{key}={value}")]
    podman("run", "--detach", "--name", name, "--network", "host", *limits(), *environment, image)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                logs = subprocess.run(podman_command("logs", name), capture_output=True, text=True)
                raise AssertionError(f"the container never answered: {logs.stdout[-2000:]} {logs.stderr[-2000:]}")
            time.sleep(0.2)
        yield name, url
    finally:
        subprocess.run(podman_command("rm", "--force", "--time", "2", name), capture_output=True, timeout=60)


def test_the_image_serves_a_stream_as_a_non_root_user(container: tuple[str, str]) -> None:
    name, url = container
    with httpx.stream("POST", url + "/api/v1/ai/chat/stream", json={"message": "from the box #tokens=5"}) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in reply.iter_lines() if line.startswith("data:")]
    assert [event["type"] for event in events] == ["metadata", *["token"] * 5, "done"]

    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    settings = json.loads(podman("inspect", name).stdout)[0]
    assert settings["Config"]["User"] == "app"
    check = " ".join(settings["Config"]["Healthcheck"]["Test"])
    assert "/healthz" in check
    podman("healthcheck", "run", name)  # exits 0 only when the check passed
    assert json.loads(podman("inspect", name).stdout)[0]["State"]["Health"]["Status"] == "healthy"
