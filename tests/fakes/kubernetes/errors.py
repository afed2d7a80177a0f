"""API errors as the real server reports them: `Status` objects with a reason and a code."""

from __future__ import annotations

from typing import Any

JsonDict = dict[str, Any]

REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """Becomes a `Status` answer with `code` as the HTTP status."""

    def __init__(
        self, code: int, message: str, *, reason: str | None = None, details: JsonDict | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason or REASONS.get(code, "InternalError" if code >= 500 else "")
        self.message = message
        self.details = details

    def status(self) -> JsonDict:
        body: JsonDict = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details:
            body["details"] = self.details
        body["code"] = self.code
        return body


def qualified(group: str, plural: str) -> str:
    """`deployments.apps`, or `secrets` for the core group, as messages name resources."""
    return f"{plural}.{group}" if group else plural


def details(group: str, plural: str, name: str | None) -> JsonDict:
    found: JsonDict = {}
    if name:
        found["name"] = name
    if group:
        found["group"] = group
    found["kind"] = plural
    return found


def not_found(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        404,
        f'{qualified(group, plural)} "{name}" not found',
        details=details(group, plural, name),
    )


def already_exists(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        409,
        f'{qualified(group, plural)} "{name}" already exists',
        reason="AlreadyExists",
        details=details(group, plural, name),
    )


def conflict(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {qualified(group, plural)} "{name}": the object has '
        "been modified; please apply your changes to the latest version and try again",
        details=details(group, plural, name),
    )


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 Invalid: `causes` are (field, message) pairs, as field validation reports them."""
    kind_name = f"{kind}.{group}" if group else kind
    summary = ", ".join(f"{field}: {message}" for field, message in causes)
    if len(causes) > 1:
        summary = f"[{summary}]"
    return ApiError(
        422,
        f'{kind_name} "{name}" is invalid: {summary}',
        details={
            "name": name,
            **({"group": group} if group else {}),
            "kind": kind,
            "causes": [
                {"reason": "FieldValueInvalid", "message": message, "field": field}
                for field, message in causes
            ],
        },
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def forbidden(
    *, verb: str, group: str, plural: str, name: str | None, namespace: str | None, user: str
) -> ApiError:
    subject = f'{qualified(group, plural)} "{name}"' if name else qualified(group, plural)
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    return ApiError(
        403,
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{plural}" '
        f'in API group "{group}"{where}',
        details=details(group, plural, name),
    )
