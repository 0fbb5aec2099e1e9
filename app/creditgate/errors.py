"""The gateway's error tree and the one handler that turns it into HTTP.

GatewayError                      500  internal_error (never raised on purpose)
├── InvalidRequest                422  invalid_request
├── NotFound                      404  not_found
│   └── ModelNotFound             404  model_not_found
├── AuthenticationFailed          401  authentication_error (+ WWW-Authenticate)
├── PermissionDenied              403  permission_denied
├── InsufficientCredits           402  insufficient_credits
├── Conflict                      409  conflict
├── QuotaExceeded (app.quotas)    429  quota_exceeded (+ X-RateLimit-* headers)
├── ProviderUnavailable           502  provider_unavailable
├── PaymentProviderError          502  payment_provider_error
├── InvalidSignature              400  invalid_signature
└── ServiceUnavailable            503  service_unavailable

Services raise these and never ``HTTPException``; routes stay thin. Every error body is
``{"error": {"type": ..., "message": ..., ...extra}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.error_type, "message": self.message, **self.extra}}

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
