"""Uploads fuzzed on both upload routes of the real orchestrator, over mutual TLS.

``PUT /v1/agent/uploads/{digest}`` (a silo's parameters) and ``PUT /v1/uploads/{digest}``
(a submitter's code bundle) are sent content under the wrong digest, truncated content,
names that are not digests, bodies past the route's limit (declared, or streamed without
a length) and broken HTTP headers. Each is refused with a 4xx that says why, nothing of
it is kept, and meanwhile silo-b's uploads and calls go on being answered.

Whether uploaded parameters are parameters (dtype, shape, finite values) is checked when
an update is aggregated; tests/integration/test_uploads.py covers that.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsilo.audit import audit_path, read_log
from tests.fuzz.conftest import EXAMPLES, Identity, Servers, assert_healthy

# the long run (FEDSILO_FUZZ_EXAMPLES=2000) takes longer than the suite's limit of 300 s a test
pytestmark = [pytest.mark.integration, pytest.mark.timeout(max(300, EXAMPLES * 6))]

ROUTES = {"/v1/agent/uploads": "silo-a", "/v1/uploads": "alice"}
LIMITS = {"/v1/agent/uploads": 4 * 1024**3, "/v1/uploads": 64 * 1024**2}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _blobs(servers: Servers) -> Path:
    return servers.workspace.kit("orchestrator").storage_path / "blobs"


def _raw(servers: Servers, who: Identity, request: bytes, *, hang_up: bool = False) -> bytes:
    """Send ``request`` as is over mutual TLS; the answer's bytes (none when ``hang_up``)."""
    url = urllib.parse.urlsplit(servers.orchestrator.url)
    context = ssl.create_default_context(cafile=who.ca)
    context.load_cert_chain(*who.cert)
    with (
        socket.create_connection((url.hostname, url.port), timeout=20) as plain,
        context.wrap_socket(plain, server_hostname=url.hostname) as tls,
    ):
        tls.sendall(request)
        if hang_up:
            return b""
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return answer


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", "connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@contextmanager
def others_served(servers: Servers) -> Iterator[list[str]]:
    """silo-b uploads and asks who it is throughout; what went wrong for it is collected."""
    who = servers.identities["silo-b"]
    failures: list[str] = []
    stop = threading.Event()

    def work() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            data = f"silo-b's update {n} {time.time()}".encode()
            url = f"{servers.orchestrator.url}/v1/agent/uploads/{_sha(data)}"
            try:
                put = who.request("PUT", url, data=data, timeout=20)
                get = who.request("GET", servers.orchestrator.url + "/v1/whoami", timeout=20)
            except OSError as exc:
                failures.append(f"silo-b got no answer: {exc!r}")
                continue
            if put.status_code != 201 or get.status_code != 200:
                failures.append(f"silo-b: upload {put.status_code}, whoami {get.status_code}")
            stop.wait(0.05)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield failures
    finally:
        stop.set()
        thread.join(30)


@pytest.mark.parametrize("route", list(ROUTES))
def test_content_under_another_digest_is_refused_and_not_kept(servers: Servers, route: str) -> None:
    who = servers.identities[ROUTES[route]]
    blobs = _blobs(servers)

    @settings(
        max_examples=EXAMPLES * 2,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        data=st.binary(min_size=1, max_size=4096),
        fault=st.sampled_from(["truncated", "extended", "flipped", "other"]),
    )
    def run(data: bytes, fault: str) -> None:
        digest = _sha(data)
        sent = {
            "truncated": data[: len(data) // 2],
            "extended": data + b"\x00",
            "flipped": bytes([data[0] ^ 1]) + data[1:],
            "other": b"not " + data,
        }[fault]
        answer = who.request(
            "PUT", f"{servers.orchestrator.url}{route}/{digest}", data=sent, timeout=20
        )
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert "does not match its digest" in error and digest in error, error
        assert not (blobs / digest).exists()

    with others_served(servers) as failures:
        run()
    assert not failures, failures[:5]
    refused = [
        e
        for e in read_log(audit_path(servers.workspace.kit("orchestrator").storage_path))
        if e.event == "upload.refused" and e.data.get("caller") == who.name
    ]
    assert refused, "refused uploads leave a line in the orchestrator's audit log"
    assert not list(blobs.glob(".up-*")), "a refused upload left a partial file behind"
    good = b"the same content, under its own digest"
    answer = who.request(
        "PUT", f"{servers.orchestrator.url}{route}/{_sha(good)}", data=good, timeout=20
    )
    assert answer.status_code in (200, 201), answer.text


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize(
    "name", ["abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "%2E%2E%2F" * 4 + "0" * 52]
)
def test_a_name_that_is_not_a_sha256_is_refused_saying_so(
    servers: Servers, route: str, name: str
) -> None:
    who = servers.identities[ROUTES[route]]
    answer = who.request("PUT", f"{servers.orchestrator.url}{route}/{name}", data=b"x", timeout=20)
    assert 400 <= answer.status_code < 500, answer.text
    error = answer.json()["error"]
    assert "sha256" in error or "no route" in error, error


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_declared_size_past_the_limit_is_refused_before_any_byte_is_read(
    servers: Servers, route: str
) -> None:
    who = servers.identities[ROUTES[route]]
    size = LIMITS[route] + 1
    answer = _raw(
        servers,
        who,
        _head("PUT", f"{route}/{'0' * 64}", {"content-length": str(size)}),
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert str(size).encode() in body and str(LIMITS[route]).encode() in body, body


def test_a_bundle_streamed_past_the_limit_is_refused(servers: Servers) -> None:
    who = servers.identities["alice"]
    chunk = b"\x00" * (1024 * 1024)
    chunks = LIMITS["/v1/uploads"] // len(chunk) + 1

    def body() -> Iterator[bytes]:  # no Content-Length: sent chunked
        for _ in range(chunks):
            yield chunk

    with others_served(servers) as failures:
        answer = who.request(
            "PUT", f"{servers.orchestrator.url}/v1/uploads/{'1' * 64}", data=body(), timeout=60
        )
    assert answer.status_code == 413, answer.text
    assert str(LIMITS["/v1/uploads"]) in answer.json()["error"]
    assert not failures, failures[:5]
    assert not list(_blobs(servers).glob(".up-*"))


@pytest.mark.parametrize("route", list(ROUTES))
def test_an_upload_cut_off_by_its_sender_leaves_nothing(servers: Servers, route: str) -> None:
    who = servers.identities[ROUTES[route]]
    data = bytes(range(256)) * 64
    digest = _sha(data)
    with others_served(servers) as failures:
        for _ in range(5):
            head = _head("PUT", f"{route}/{digest}", {"content-length": str(len(data))})
            _raw(servers, who, head + data[: len(data) // 3], hang_up=True)
        time.sleep(0.5)
    assert not failures, failures[:5]
    assert not (_blobs(servers) / digest).exists()
    assert not list(_blobs(servers).glob(".up-*")), "a cut-off upload left a partial file"
    assert_healthy(servers.orchestrator, servers.identities["alice"])


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize(
    "headers",
    [
        {"content-length": "abc"},
        {"content-length": "-5"},
        {"content-length": "5", "transfer-encoding": "chunked"},
        {"transfer-encoding": "gzip"},
    ],
    ids=["length-not-a-number", "length-negative", "length-and-chunked", "unknown-encoding"],
)
def test_broken_upload_headers_get_a_4xx(
    servers: Servers, route: str, headers: dict[str, str]
) -> None:
    who = servers.identities[ROUTES[route]]
    answer = _raw(servers, who, _head("PUT", f"{route}/{'2' * 64}", headers) + b"hello\r\n")
    status = answer[9:12]
    assert status.startswith(b"4"), answer[:300]
    assert_healthy(servers.orchestrator, servers.identities["alice"])
