"""A real ``chisel serve`` against hostile bytes: numbers JSON cannot hold, numbers too big for a float, JSON nested
past Python's recursion limit, a NUL byte in a header. Each gets a 400 with a structured error; nothing reaches a
500 or a traceback in the log, and a malformed request costs at most one short log line."""
from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest
import requests

from test_server_support import ServeProcess, make_root

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

API = {"1": {"class_type": "Number", "inputs": {"value": 2}}, "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
NATIVE = {"nodes": {"1": {"type": "Number", "inputs": {"value": 2}}, "2": {"type": "Show", "inputs": {"value": ["1", "INT"]}}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServeProcess(make_root(tmp_path_factory.mktemp("hard")))
    yield proc
    proc.stop()


def _post(server, path: str, raw: str) -> requests.Response:
    return requests.post(server.url + path, data=raw.encode(), headers={"Content-Type": "application/json"},
                         timeout=30)


PROMPT = json.dumps(API)
BAD_BODIES = [
    ("/prompt", '{"prompt": %s, "number": NaN}' % PROMPT),
    ("/prompt", '{"prompt": %s, "number": -Infinity}' % PROMPT),
    ("/prompt", '{"prompt": %s, "number": %s}' % (PROMPT, "9" * 400)),
    ("/prompt", '{"prompt": %s, "number": 1e400}' % PROMPT),  # JSON's float overflows to inf
    ("/prompt", '{"prompt": %s, "number": 1e300}' % PROMPT),  # finite, beyond a queue position
    ("/prompt", '{"prompt": %s, "number": %s}' % (PROMPT, "9" * 5000)),  # over Python's int digit limit
    ("/api/prompt", '{"prompt": %s, "number": NaN}' % PROMPT),
    ("/v1/prompts", '{"workflow": %s, "set": {"1.value": NaN}}' % json.dumps(NATIVE)),
    ("/v1/prompts", '{"workflow": %s, "set": {"1.value": %s}}' % (json.dumps(NATIVE), "9" * 5000)),
    ("/v1/validate", '{"workflow": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    ("/v1/validate", '{"workflow": {"nodes": Infinity}}'),
    ("/v1/queue/move", '{"prompt_id": "x", "position": %s}' % ("9" * 400)),
]


@pytest.mark.parametrize("path,raw", BAD_BODIES, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BAD_BODIES)])
def test_non_finite_and_huge_numbers_are_400(server, path, raw):
    r = _post(server, path, raw)
    assert r.status_code == 400, r.text[:500]
    body = r.json()
    error = body["error"]
    assert error.get("kind", error.get("type")) and error["message"]
    assert "Traceback" not in r.text


def test_a_finite_number_still_queues(server):
    r = _post(server, "/prompt", '{"prompt": %s, "number": 3.5}' % PROMPT)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"prompt_id", "number", "node_errors"}


def _raw(server, request: bytes) -> bytes:
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_nul_in_a_header_is_refused_with_one_log_line(server):
    before = server.log_text()
    for _ in range(5):
        reply = _raw(server, b"GET /v1/auth HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Evil: a\x00b\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n", 1)[0]
    reply = _raw(server, b"GET /v1/auth HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert b" 200 " in reply.split(b"\r\n", 1)[0]  # and the server still answers
    added = server.log_text()[len(before):]
    lines = [ln for ln in added.splitlines() if ln.strip()]
    assert "Traceback" not in added and " ERROR " not in added, added
    assert len(lines) == 5 and all("malformed request" in ln and len(ln) < 300 for ln in lines), added


def test_no_traceback_in_the_log_after_all_that(server):
    assert requests.get(server.url + "/v1/queue", timeout=10).status_code == 200
    assert "Traceback" not in server.log_text()
