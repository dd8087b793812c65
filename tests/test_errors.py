"""The error hierarchy: one status per class and one wire shape per front door, no leaks."""

from __future__ import annotations

import pytest

from enginehouse import errors as E


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (E.EnginehouseError("x"), 500),
        (E.InvalidRequest("x"), 400),
        (E.InvalidName("x"), 400),
        (E.InvalidDigest("x"), 400),
        (E.InvalidModelFile("x"), 400),
        (E.ModelNotFound("m"), 404),
        (E.BlobNotFound("x"), 404),
        (E.StoreError("x"), 500),
        (E.EngineNotInstalled("x"), 503),
        (E.EngineBuildFailed("x"), 500),
        (E.RunnerError("x"), 502),
        (E.RunnerStartFailed("x"), 502),
        (E.ServerBusy(), 503),
        (E.UpstreamUnavailable("x"), 502),
        (Exception("x"), 500),
        (ValueError("x"), 500),
        (KeyError("x"), 500),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_http_status(exc: BaseException, status: int) -> None:
    assert E.http_status(exc) == status


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        (E.InvalidName, E.InvalidRequest),
        (E.InvalidDigest, E.InvalidRequest),
        (E.InvalidModelFile, E.InvalidRequest),
        (E.RunnerStartFailed, E.RunnerError),
        (E.InvalidRequest, E.EnginehouseError),
        (E.ModelNotFound, E.EnginehouseError),
        (E.ServerBusy, E.EnginehouseError),
        (E.UpstreamUnavailable, E.EnginehouseError),
    ],
)
def test_hierarchy(child: type, parent: type) -> None:
    assert issubclass(child, parent)


ALL = [
    E.EnginehouseError("boom"),
    E.InvalidRequest("bad field"),
    E.InvalidName("bad name"),
    E.ModelNotFound("foo:bar", ["foo:baz"]),
    E.BlobNotFound("no blob"),
    E.EngineNotInstalled("install it"),
    E.RunnerStartFailed("start failed"),
    E.ServerBusy(),
    E.UpstreamUnavailable("gone"),
    Exception("secret /path"),
]


@pytest.mark.parametrize("exc", ALL, ids=lambda e: type(e).__name__)
def test_ollama_error_body_shape(exc: BaseException) -> None:
    body = E.ollama_error_body(exc)
    assert list(body) == ["error"]
    assert isinstance(body["error"], str) and body["error"]


@pytest.mark.parametrize("exc", ALL, ids=lambda e: type(e).__name__)
def test_openai_error_body_shape(exc: BaseException) -> None:
    body = E.openai_error_body(exc)
    assert list(body) == ["error"]
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str)
    assert err["param"] is None
    assert err["code"] is None or isinstance(err["code"], str)


@pytest.mark.parametrize(
    ("exc", "err_type", "code"),
    [
        (E.InvalidRequest("x"), "invalid_request_error", None),
        (E.InvalidName("x"), "invalid_request_error", None),
        (E.ModelNotFound("m"), "invalid_request_error", "model_not_found"),
        (E.BlobNotFound("x"), "invalid_request_error", None),
        (E.ServerBusy(), "server_error", "server_busy"),
        (E.EngineNotInstalled("x"), "server_error", "503"),
        (E.RunnerError("x"), "server_error", "502"),
        (E.StoreError("x"), "server_error", "500"),
        (RuntimeError("x"), "server_error", "500"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_openai_type_and_code(exc: BaseException, err_type: str, code: str | None) -> None:
    err = E.openai_error_body(exc)["error"]
    assert err["type"] == err_type
    assert err["code"] == code


def test_own_messages_are_verbatim() -> None:
    exc = E.InvalidRequest("invalid request: messages: Input should be a valid list")
    assert E.public_message(exc) == exc.message == str(exc)
    assert E.ollama_error_body(exc) == {"error": exc.message}
    assert E.openai_error_body(exc)["error"]["message"] == exc.message


def test_details_are_kept_but_not_sent() -> None:
    exc = E.RunnerError("runner died", retry_after=2.0, log="/secret/log")
    assert exc.details == {"retry_after": 2.0, "log": "/secret/log"}
    assert "/secret/log" not in str(E.ollama_error_body(exc))
    assert "/secret/log" not in str(E.openai_error_body(exc))


@pytest.mark.parametrize(
    ("suggestions", "expected"),
    [
        (None, "model 'smollm2:136m' not found"),
        ([], "model 'smollm2:136m' not found"),
        (["smollm2:135m"], "model 'smollm2:136m' not found; did you mean 'smollm2:135m'?"),
        (
            ["smollm2:135m", "smollm2:360m"],
            "model 'smollm2:136m' not found; did you mean 'smollm2:135m', 'smollm2:360m'?",
        ),
    ],
)
def test_model_not_found_message(suggestions: list[str] | None, expected: str) -> None:
    exc = E.ModelNotFound("smollm2:136m", suggestions)
    assert exc.message == expected
    assert exc.name == "smollm2:136m"
    assert exc.suggestions == (suggestions or [])
    assert E.ollama_error_body(exc) == {"error": expected}


def test_server_busy() -> None:
    exc = E.ServerBusy(retry_after=2.5)
    assert exc.retry_after == 2.5 and exc.status == 503
    assert E.ServerBusy().retry_after == 1.0
    assert "busy" in E.ServerBusy().message


@pytest.mark.parametrize(
    "exc",
    [
        Exception("secret /path"),
        RuntimeError("secret /path"),
        OSError(13, "Permission denied", "/secret/path"),
        KeyError("secret /path"),
        ValueError("Traceback (most recent call last): secret /path"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_foreign_exceptions_never_leak(exc: BaseException) -> None:
    assert E.public_message(exc) == "internal server error"
    for body in (E.ollama_error_body(exc), E.openai_error_body(exc)):
        text = repr(body)
        assert "secret" not in text and "/path" not in text and "Traceback" not in text
    assert E.ollama_error_body(exc) == {"error": "internal server error"}
    assert E.openai_error_body(exc) == {
        "error": {"message": "internal server error", "type": "server_error", "param": None, "code": "500"}
    }
