"""Schema-driven fuzzing of a real ``chisel serve``: schemathesis generates requests from the server's own
``/openapi.json`` — valid ones and invalid ones — for every operation. No answer is a 5xx, every answer matches the
published schema (status, content type, body), every invalid request is refused with a 4xx, and afterwards the
server still answers and its log holds no traceback.

The number of examples per operation is bounded (``CHISEL_FUZZ_EXAMPLES``, default 10 valid + 10 invalid), so
the whole run stays within a few minutes on two cores."""
from __future__ import annotations

import os
import re

import pytest
import requests

from test_server_support import ServeProcess, make_root

import schemathesis  # noqa: E402  (a declared test dependency: its absence is a failure, not a skip)
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

EXAMPLES = int(os.environ.get("CHISEL_FUZZ_EXAMPLES", "10"))
ONLY = re.compile(os.environ.get("CHISEL_FUZZ_ONLY", ""))  # a regex over paths, to re-run a few operations
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Where a request the schema allows may still be refused for what it holds (a workflow that does not validate, bytes
# that are not an image, a file name that is unusable), schema-valid data is not expected to be accepted.
CONTENT_CHECKED = {"/v1/prompts", "/prompt", "/v1/validate", "/v1/workflow/convert", "/v1/workflow/export",
                   "/v1/workflow/from-png", "/v1/upload",
                   "/upload/image", "/upload/mask", "/v1/view", "/view",
                   "/users", "/v1/user/workflows/{name}", "/v1/user/workflows/{name}/rename"}  # (creating a user: always refused, Chisel has one)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = make_root(tmp_path_factory.mktemp("fuzz"))
    proc = ServeProcess(root)
    yield proc
    proc.stop()


def _run(operation, mode: GenerationMode, base_url: str, session: requests.Session) -> None:
    checks = list(CHECKS)
    if mode == GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)
    elif operation.path.removeprefix("/api") not in CONTENT_CHECKED:
        checks.append(positive_data_acceptance)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def test(case):
        case.call_and_validate(base_url=base_url, session=session, checks=checks, timeout=30)

    test()


def test_every_operation_survives_schema_generated_requests(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    session = requests.Session()
    failures, tried = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if not ONLY.search(operation.path):
            continue
        if operation.path.endswith("/ws"):  # a WebSocket: a plain GET is refused with 400, nothing to generate
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            tried += 1
            try:
                _run(operation, mode, server.url, session)
            except Unsatisfiable:  # nothing to make invalid: no body, no query, only free-text path parameters
                assert mode == GenerationMode.NEGATIVE, operation.path
            except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): "
                                f"{type(exc).__name__}: {str(exc)[:1500]}")
    assert tried > 80 or ONLY.pattern
    assert not failures, "\n\n".join(failures)
    # the server is alive and its log holds no traceback
    assert requests.get(server.url + "/v1/queue", timeout=10).status_code == 200
    assert server.proc.poll() is None
    log = server.log_text()
    assert "Traceback" not in log, log[-4000:]
