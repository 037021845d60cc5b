"""``GET /trace/<id>`` on ``govnotify api``: where is my message, for upstream systems.

The same lookup as ``govnotify trace`` (:func:`infra.trace.trace`), authenticated with a
source's bearer token exactly as ``POST /events`` is (:func:`producers.ingest_http.bearer_source`):

- a source traces the events it published (the journal's envelope ``source``, or, once the
  journal row is purged, the source its notifications keep) and sees exactly what each caused:
  the accepted event, jobs, notifications with every provider status and its time, staff tasks;
- a source registered with ``--trace-any`` (the 12345 hotline) traces any id, licenses, cases
  and mobile numbers included, and sees the rest of the chain as context too. A trace by
  mobile number is recorded in ``operator_audit`` (``trace.api-mobile``: which source asked
  and how much it saw, never the number).

Personal data is always masked here (mobiles, names, free text): there is no reveal over the
api. Answers are JSON: 200 with the chain; 401 without a valid token; 404 ``not_found`` for an
id that is unknown *or* not the asking source's (the same answer, so a source learns nothing of
others' ids); 400 for an id that cannot be one (at most 64 characters of letters, digits and
``._:+-``); 413 for a request with a body; 503 when the database does not answer.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError

from infra import audit
from infra.db import session
from infra.sources import authenticate_token
from infra.trace import Shown, Trace, event_sources, step_json, trace_in
from producers.http_guards import Refusal, read_body
from producers.ingest_http import Authenticate, bearer_source

if TYPE_CHECKING:
    from infra.settings import Settings
    from schemas.models import Source

__all__ = ["MOBILE_TRACE_ACTION", "TRACE_PREFIX", "TRACE_REQUESTS", "HttpTrace"]

log = logging.getLogger("govnotify.api.trace")

#: The route: ``GET /trace/<id>``.
TRACE_PREFIX = "/trace/"
#: The ``operator_audit`` action of a hotline's trace by mobile number.
MOBILE_TRACE_ACTION = "trace.api-mobile"
#: What an id may be: an event id (a UUID), a license, case or evaluation id, a mobile number
#: (``+86 138…`` written with ``+`` and ``-`` at most).
_ID = re.compile(r"[A-Za-z0-9+][A-Za-z0-9._:+-]{0,63}")

TRACE_REQUESTS = Counter(
    "govnotify_trace_requests_total",
    "Trace requests to the api (GET /trace/<id>), by HTTP status.",
    ["status"],
)


class HttpTrace:
    """The ``GET /trace/<id>`` handler: authenticate, check the id, authorise, answer."""

    def __init__(self, settings: Settings, authenticate: Authenticate = authenticate_token):
        self.settings = settings
        self.authenticate = authenticate

    def handle(self, environ: dict[str, Any]) -> tuple[int, bytes, str]:
        """Answer one request: (HTTP status, JSON body, content type).

        Raises:
          Refusal: 401, 400, 404, 413 or 503.
        """
        source = bearer_source(self.settings, self.authenticate, environ.get("HTTP_AUTHORIZATION"))
        read_body(environ, 0)  # a GET carries no body: any is refused before it is read
        # PATH_INFO is already percent-decoded (WSGI): decoding again would let ``%2525``
        # through as ``%``.
        query = str(environ.get("PATH_INFO") or "")[len(TRACE_PREFIX) :]
        if not _ID.fullmatch(query):
            raise Refusal(400, "malformed", "not an event, license or case id or a mobile")
        try:
            found = self._trace(source, query)
        except SQLAlchemyError as exc:
            raise Refusal(503, "error", f"database: {type(exc).__name__}") from None
        if found is None:
            raise Refusal(404, "not_found", f"nothing {source.name} may trace")
        shown = Shown(reveal=False)
        body: dict[str, Any] = {
            "query": shown.query(found),
            "event": found.is_event,
            "caused": [step_json(step, self.settings.tz, shown) for step in found.caused],
        }
        if source.trace_any:
            body["subjects"] = list(found.subjects)
            body["steps"] = [step_json(step, self.settings.tz, shown) for step in found.steps]
        return 200, json.dumps(body, ensure_ascii=False).encode("utf-8"), "application/json"

    def _trace(self, source: Source, query: str) -> Trace | None:
        """What ``source`` may see of ``query``, or None (unknown, or not its to see)."""
        with session(self.settings) as s:
            if not source.trace_any:
                # Its own events only, checked before anything else is read.
                if source.name not in event_sources(s, query):
                    return None
                found = trace_in(s, query)
                return found if found.is_event else None
            found = trace_in(s, query)
        if not found.found:
            return None
        if found.mobile is not None:
            # Who asked and how much they saw; the number itself is not recorded.
            audit.record(
                self.settings,
                f"source:{source.name}",
                MOBILE_TRACE_ACTION,
                "mobile",
                {"steps": len(found.steps), "subjects": list(found.subjects)},
            )
        return found
