"""The gateway's error tree and the one handler that turns it into HTTP.

GatewayError                      500  internal_error (never raised on purpose)
├── InvalidRequest                422  invalid_request (400 on the inference routes)
├── NotFound                      404  not_found
│   └── ModelNotFound             404  model_not_found
├── AuthenticationFailed          401  authentication_error (+ WWW-Authenticate); code missing_api_key | invalid_api_key
├── PermissionDenied              403  permission_denied
├── InsufficientCredits           402  insufficient_credits; code insufficient_credits | org_insufficient_credits |
│                                      no_allocation | allocation_exhausted (its ``reason``)
├── Conflict                      409  conflict
├── QuotaExceeded (app.quotas)    429  quota_exceeded (+ X-RateLimit-* headers)
├── ProviderUnavailable           502  provider_unavailable
│   UpstreamRejected (providers)  400  upstream_rejected
├── PaymentProviderError          502  payment_provider_error
├── InvalidSignature              400  invalid_signature
└── ServiceUnavailable            503  service_unavailable

Services raise these and never ``HTTPException``; routes stay thin. Each error has a stable ``code``
(its type unless it says more). The one handler (errors_http.py) writes it in the caller's protocol:
``{"error": {"type", "code", "message", ...extra}}`` on the gateway's own routes, OpenAI's
``{"error": {"message", "type", "param", "code", ...}}`` on /v1 and Anthropic's
``{"type": "error", "error": {"type", "message", "code", ...}}`` on /v1/messages.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra
        self._code = code

    @property
    def code(self) -> str:
        """The stable machine-readable code clients branch on."""
        return self._code or self.error_type

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.error_type, "code": self.code, "message": self.message, **self.extra}}

    def headers(self) -> dict[str, str] | None:
        return None


class InvalidRequest(GatewayError):
    status_code = 422
    error_type = "invalid_request"


class NotFound(GatewayError):
    status_code = 404
    error_type = "not_found"


class ModelNotFound(NotFound):
    error_type = "model_not_found"


class AuthenticationFailed(GatewayError):
    status_code = 401
    error_type = "authentication_error"

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": 'Bearer realm="creditgate"'}


class PermissionDenied(GatewayError):
    status_code = 403
    error_type = "permission_denied"


class InsufficientCredits(GatewayError):
    status_code = 402
    error_type = "insufficient_credits"

    @property
    def code(self) -> str:
        return str(self._code or self.extra.get("reason") or self.error_type)


class Conflict(GatewayError):
    status_code = 409
    error_type = "conflict"


class ProviderUnavailable(GatewayError):
    status_code = 502
    error_type = "provider_unavailable"


class PaymentProviderError(GatewayError):
    status_code = 502
    error_type = "payment_provider_error"


class InvalidSignature(GatewayError):
    status_code = 400
    error_type = "invalid_signature"


class ServiceUnavailable(GatewayError):
    status_code = 503
    error_type = "service_unavailable"
