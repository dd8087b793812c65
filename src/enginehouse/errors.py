"""The exception hierarchy and its one mapping to HTTP status and wire shape per front door.

    EnginehouseError                      500  anything we raise on purpose
    ├── InvalidRequest                    400  bad input from a client or the command line
    │   ├── InvalidName                   400  a model name that is malformed or would escape the store
    │   ├── InvalidDigest                 400  not ``sha256:<64 hex>``
    │   ├── InvalidModelFile              400  not a GGUF file, truncated, or otherwise unreadable
    │   ├── ContextOverflow               400  the prompt is longer than the model's context
    │   └── ResponseNotFound              404  no stored /v1/responses answer by that id (for this key)
    ├── Unauthorized                      401  an API key is configured and the request lacks it
    ├── Forbidden                         403  refused by the browser guard (Host, Origin, Content-Type)
    ├── RequestTimeout                    408  the request body did not arrive in time
    ├── RequestTooLarge                   413  the body is over the configured limit
    ├── UnsupportedMediaType              415  a compressed (Content-Encoding) request body
    ├── ModelNotFound                     404  no such model (names the closest known ones)
    ├── BlobNotFound                      404  no such blob
    ├── StoreError                        500  the store could not be read or written
    ├── EngineNotInstalled                503  no engine binary found or built
    ├── EngineBuildFailed                 500  building an engine failed (carries the log tail)
    ├── ConversionFailed                  500  converting a Hugging Face model to GGUF failed
    ├── RunnerError                       502  a runner failed to start, died, or answered badly
    │   ├── RunnerStartFailed             502  carries the last lines of the runner's log
    │   └── EngineRefused                 502  the engine is up and answered this request with an error
    ├── ServerBusy                        503  queue full: try again after ``retry_after`` seconds
    ├── InsufficientMemory                507  the model cannot fit in the memory budget, ever
    ├── InsufficientStorage               507  the store's disk has no room for an upload
    ├── AllCandidatesFailed               503  routing tried every candidate; lists each and why
    ├── LoopDetected                      508  a request came back to a node it already passed
    ├── UpstreamUnavailable               502  a remote engine could not be reached
    └── DeadlineExceeded                  504  an engine spent longer than ENGINEHOUSE_REQUEST_TIMEOUT on it

Handlers never format errors themselves: they call :func:`ollama_error_body` or
:func:`openai_error_body` with the exception and :func:`http_status` for the status; Anthropic's door
(``/v1/messages*``) takes :func:`anthropic_status` and :func:`anthropic_error_body` instead, since its
clients read "busy" as 529 (overloaded), not 503.
"""

from __future__ import annotations

from typing import Any

from enginehouse.redact import redact


class EnginehouseError(Exception):
    status = 500
    openai_type = "server_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(EnginehouseError):
    """``param`` names the offending field as OpenAI does (``messages[0].content``), or None."""

    status = 400
    openai_type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.param = param


class InvalidName(InvalidRequest):
    pass


class InvalidDigest(InvalidRequest):
    pass


class InvalidModelFile(InvalidRequest):
    pass


class ContextOverflow(InvalidRequest):
    """The engine counted the prompt with the model's tokenizer and it does not fit the context."""


class ResponseNotFound(InvalidRequest):
    """A stored response that is not there: never stored, deleted, dropped at the store's bounds, or
    another key's. An InvalidRequest so that ``param`` can name ``previous_response_id``."""

    status = 404


class Unauthorized(EnginehouseError):
    status = 401
    openai_type = "invalid_request_error"


class Forbidden(EnginehouseError):
    status = 403
    openai_type = "invalid_request_error"


class RequestTimeout(EnginehouseError):
    status = 408
    openai_type = "invalid_request_error"


class RequestTooLarge(EnginehouseError):
    status = 413
    openai_type = "invalid_request_error"


class UnsupportedMediaType(EnginehouseError):
    status = 415
    openai_type = "invalid_request_error"


class ModelNotFound(EnginehouseError):
    status = 404
    openai_type = "invalid_request_error"

    def __init__(self, name: str, suggestions: list[str] | None = None) -> None:
        self.name = name
        self.suggestions = suggestions or []
        message = f"model '{name}' not found"
        if self.suggestions:
            message += "; did you mean " + ", ".join(f"'{s}'" for s in self.suggestions) + "?"
        super().__init__(message)


class BlobNotFound(EnginehouseError):
    status = 404
    openai_type = "invalid_request_error"


class StoreError(EnginehouseError):
    pass


class EngineNotInstalled(EnginehouseError):
    status = 503


class EngineBuildFailed(EnginehouseError):
    pass


class ConversionFailed(EnginehouseError):
    """The converter ran and failed; the message is its own reason (e.g. an unsupported architecture)."""


class RunnerError(EnginehouseError):
    status = 502


class EngineRefused(RunnerError):
    """The engine is up and answered this request with an error (its 500, or an error event mid-stream):
    the request failed, not the engine, so it does not count against the model's health. llama-server
    answers 500 to inputs its template or parser throws on; counting those would let one client's bad
    requests cool a model down for everyone."""


class RunnerStartFailed(RunnerError):
    pass


class ServerBusy(EnginehouseError):
    status = 503

    def __init__(self, message: str = "server busy, please try again.", retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InsufficientMemory(EnginehouseError):
    status = 507


class InsufficientStorage(EnginehouseError):
    status = 507


class UpstreamUnavailable(EnginehouseError):
    status = 502


class DeadlineExceeded(EnginehouseError):
    """Not a RunnerError: the engine is fine, the request was long; no other candidate is tried."""

    status = 504

    @classmethod
    def after(cls, seconds: float) -> DeadlineExceeded:
        return cls(f"the request ran past its deadline of {seconds:g}s and was cancelled")


class AllCandidatesFailed(EnginehouseError):
    status = 503

    def __init__(self, message: str, tried: list[tuple[str, str]], retry_after: float = 1.0) -> None:
        super().__init__(message, tried=tried)
        self.tried = tried  # (candidate, why) in the order tried
        self.retry_after = retry_after


class LoopDetected(EnginehouseError):
    status = 508


def http_status(exc: BaseException) -> int:
    return exc.status if isinstance(exc, EnginehouseError) else 500


def public_message(exc: BaseException) -> str:
    """What a client may see: our own messages, never a traceback, an internal repr, an exception class
    name or a path under the server's own directories (:func:`enginehouse.redact.redact`)."""
    if isinstance(exc, EnginehouseError):
        return redact(exc.message)
    return "internal server error"


def ollama_error_body(exc: BaseException) -> dict[str, Any]:
    return {"error": public_message(exc)}


def openai_error_body(exc: BaseException) -> dict[str, Any]:
    status = http_status(exc)
    err_type = exc.openai_type if isinstance(exc, EnginehouseError) else "server_error"
    code: str | None = None
    if isinstance(exc, ModelNotFound):
        code = "model_not_found"
    elif isinstance(exc, ServerBusy):
        code = "server_busy"
    elif isinstance(exc, Unauthorized):
        code = "invalid_api_key"
    elif isinstance(exc, Forbidden):
        code = "forbidden"
    elif isinstance(exc, ContextOverflow):
        code = "context_length_exceeded"
    elif isinstance(exc, AllCandidatesFailed):
        code = "all_candidates_failed"
    return {
        "error": {
            "message": public_message(exc),
            "type": err_type,
            "param": exc.param if isinstance(exc, InvalidRequest) else None,
            "code": code if code else (str(status) if status >= 500 else None),
        }
    }


#: Anthropic's error types by status; any other 4xx is ``invalid_request_error``, any other 5xx ``api_error``.
ANTHROPIC_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_status(exc: BaseException, status: int | None = None) -> int:
    """The status Anthropic's clients expect: a full queue or no free candidate is 529 (overloaded,
    which their SDKs retry); anything else keeps its status."""
    if isinstance(exc, ServerBusy | AllCandidatesFailed):
        return 529
    return status if status is not None else http_status(exc)


def anthropic_error_body(exc: BaseException, status: int | None = None) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``; ``status`` when it is not the exception's
    own (an aiohttp HTTP error carried as InvalidRequest)."""
    code = anthropic_status(exc, status)
    kind = ANTHROPIC_TYPES.get(code) or ("invalid_request_error" if code < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": public_message(exc)}}
