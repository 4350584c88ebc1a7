"""The error table the emulator answers with, and the exception that carries one entry.

Every refusal of a usage or bill request, from the gateway or from the platform behind it, leaves
the emulator as ``{"error_code": ..., "error_msg": ...}`` with a fixed HTTP status. Keeping the
whole table on one page means a test can name the exact code a client must react to, and a reader
can compare it with the published KooGallery table line by line.

    ErrorCode               HTTP  meaning
    ----------------------  ----  --------------------------------------------------------
    SUCCESS        MKT.0000  200  received
    INTERNAL       MKT.0999  500  system internal error (also the injected ``500`` fault)
    BAD_INPUT      MKT.0100  500  a field has an illegal value, format or range
    BAD_PARAMETER  MKT.0101  400  missing, unknown or mis-shaped parameters
    BAD_BODY_SIGN  MKT.0102  400  the ``signature``/``ts``/``nonce`` body signature failed
    ILLEGAL_OP     MKT.0150  401  the caller may not act for this partner
    NO_AUTHORITY   MKT.0151  401  the credential has no permission for this API
    ILLEGAL_TOKEN  MKT.0154  401  the security token is missing or wrong
    NO_INSTANCE    MKT.9001  500  the instance is unknown
    BAD_ENTITY     MKT.9002  500  the metering entity is not one of the instance's
    TOO_MANY       MKT.9003  500  more than 1000 records in one request
    TOO_OLD        MKT.9004  500  ``begin_time`` is more than 21 days in the past
    RATE_LIMITED   MKT.0250  429  access frequency over the limit (the injected ``429`` fault)
    APIG_AUTH      APIG.0301 401  no, garbled or unknown-AK ``Authorization``
    APIG_SIGNATURE APIG.0303 401  signature mismatch; the message echoes the canonical request
    APIG_EXPIRED   APIG.0304 401  ``X-Sdk-Date`` more than 15 minutes from the emulator's clock
    APIG_NOT_FOUND APIG.0101 404  no API is published at this method and path
    APIG_TOO_LARGE APIG.0201 413  the body exceeds the gateway's 12 MiB limit for AK/SK calls

The bill (BSS) APIs answer with the billing system's ``CBC`` codes and two more gateway codes:

    ErrorCode                     HTTP  meaning
    ----------------------------  ----  -------------------------------------------------
    CBC_BAD_PARAMETER   CBC.0100   400  a malformed, out-of-range or not-yet-closed cycle
    CBC_TOKEN           CBC.0154   401  the security token is missing or wrong
    CBC_NO_ACCESS       CBC.0151   403  wrong ``X-Domain-Id``, or the account is no partner
    CBC_INTERNAL        CBC.0999   500  system error (the injected bill ``500`` fault)
    APIG_THROTTLED      APIG.0308  429  over the rate limit (the injected bill ``429`` fault)
    APIG_NOT_PUBLISHED  APIG.0101  404  the site does not publish this bill API
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "APIG_AUTH",
    "APIG_EXPIRED",
    "APIG_NOT_FOUND",
    "APIG_NOT_PUBLISHED",
    "APIG_SIGNATURE",
    "APIG_THROTTLED",
    "APIG_TOO_LARGE",
    "BAD_BODY_SIGN",
    "BAD_ENTITY",
    "BAD_INPUT",
    "BAD_PARAMETER",
    "CBC_BAD_PARAMETER",
    "CBC_INTERNAL",
    "CBC_NO_ACCESS",
    "CBC_TOKEN",
    "ILLEGAL_OP",
    "ILLEGAL_TOKEN",
    "INTERNAL",
    "NO_AUTHORITY",
    "NO_INSTANCE",
    "RATE_LIMITED",
    "SUCCESS",
    "TOO_MANY",
    "TOO_OLD",
    "ApiError",
    "ErrorCode",
]


@dataclass(frozen=True)
class ErrorCode:
    """One line of the error table: the code, its HTTP status and its standard message."""

    code: str
    http_status: int
    message: str


SUCCESS = ErrorCode("MKT.0000", 200, "success")
INTERNAL = ErrorCode("MKT.0999", 500, "System internal error.")
BAD_INPUT = ErrorCode("MKT.0100", 500, "Failure of input parameter")
BAD_PARAMETER = ErrorCode("MKT.0101", 400, "Invalid parameter")
BAD_BODY_SIGN = ErrorCode("MKT.0102", 400, "Invalid body sign")
ILLEGAL_OP = ErrorCode("MKT.0150", 401, "Illegal operation")
NO_AUTHORITY = ErrorCode("MKT.0151", 401, "No authority")
ILLEGAL_TOKEN = ErrorCode("MKT.0154", 401, "Illegal token")
NO_INSTANCE = ErrorCode("MKT.9001", 500, "Instance ID not found.")
BAD_ENTITY = ErrorCode("MKT.9002", 500, "Invalid usage enties.")
TOO_MANY = ErrorCode("MKT.9003", 500, "Usage records extends size limit.")
TOO_OLD = ErrorCode("MKT.9004", 500, "Record beginTime extends Limit.")
RATE_LIMITED = ErrorCode("MKT.0250", 429, "Access frequency overlimit")
APIG_AUTH = ErrorCode("APIG.0301", 401, "Incorrect authentication information")
APIG_SIGNATURE = ErrorCode("APIG.0303", 401, "Incorrect app authentication information")
APIG_EXPIRED = ErrorCode("APIG.0304", 401, "Request expired")
APIG_NOT_FOUND = ErrorCode(
    "APIG.0101", 404, "The API does not exist or has not been published in the environment"
)
APIG_TOO_LARGE = ErrorCode("APIG.0201", 413, "Request entity too large")
APIG_NOT_PUBLISHED = ErrorCode("APIG.0101", 404, "API not exist or not published")
APIG_THROTTLED = ErrorCode(
    "APIG.0308",
    429,
    "The throttling threshold has been reached: policy user over ratelimit,limit:10,time:1 second",
)
CBC_BAD_PARAMETER = ErrorCode("CBC.0100", 400, "Invalid parameter")
CBC_TOKEN = ErrorCode("CBC.0154", 401, "Illegal token")
CBC_NO_ACCESS = ErrorCode("CBC.0151", 403, "domain_id has no access to this api")
CBC_INTERNAL = ErrorCode("CBC.0999", 500, "System internal error.")


class ApiError(Exception):
    """A refusal of a usage or bill request, raised anywhere in the pipeline and answered as-is.

    The detail names what was wrong (for records: the index and the field), so a failing
    client test points at the exact input instead of a bare code.

        raise ApiError(BAD_INPUT, "usage_records[3].usage_value has 5 decimal places")
    """

    def __init__(self, error: ErrorCode, detail: str | None = None) -> None:
        self.error = error
        self.detail = detail
        super().__init__(self.error_msg)

    @property
    def http_status(self) -> int:
        """The HTTP status the gateway or platform answers this error with."""
        return self.error.http_status

    @property
    def error_code(self) -> str:
        """The ``error_code`` field of the response body."""
        return self.error.code

    @property
    def error_msg(self) -> str:
        """The standard message, followed by the detail when there is one."""
        if self.detail is None:
            return self.error.message
        return f"{self.error.message}: {self.detail}"
