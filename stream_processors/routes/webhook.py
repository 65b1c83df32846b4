"""A generic JSON webhook: the alert event itself, signed with HMAC-SHA256 so the receiver can trust it.

Signed bytes: `<X-Trainmon-Timestamp>` + "." + body, keyed with the route's `secret`. Binding the
timestamp into the signature lets a receiver refuse replays of an old, validly signed request.
Each attempt is signed afresh (a retry carries a new timestamp). Verification: docs/routes.md.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

from trainmon.stream_processors.routes.base import Request, Route, RouteSpec
from trainmon.stream_processors.routes.common import JSON_HEADERS, check_params, check_url
from trainmon import contract

SIGNATURE_HEADER = "X-Trainmon-Signature"
TIMESTAMP_HEADER = "X-Trainmon-Timestamp"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Trainmon-Signature value: 'sha256=' + hex HMAC-SHA256(secret, timestamp + '.' + body)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookRoute(Route):
    kind = "webhook"

    def __init__(self, spec: RouteSpec) -> None:
        super().__init__(spec)
        check_params(spec.params, required=("secret",))
        self.url = check_url(spec.url)
        self.secret = spec.params["secret"]

    def request(self, alert: Mapping[str, Any]) -> Request:
        body = contract.encode(alert)
        timestamp = str(int(time.time()))
        headers = {
            **JSON_HEADERS,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(self.secret, timestamp, body),
        }
        return Request(self.url, body, headers)
