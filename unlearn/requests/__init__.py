"""Deletion requests: parsing request files, routing valid requests, and the ledger of every batch.

* :mod:`~unlearn.requests.parsing`: request files (JSON or CSV) to rows, never raising on bad content;
* :mod:`~unlearn.requests.hashing`: content digests, salted subject and sample-set hashes;
* :mod:`~unlearn.requests.ledger`: every batch, its status and lifecycle steps, and every acknowledged request;
* :mod:`~unlearn.requests.routing`: where each valid request goes (accepted, acknowledged or rejected).

Import from this package; the modules are its layout, not its interface.
"""

from unlearn.requests.hashing import content_digest, hash_ids, hash_subject, load_or_create_salt, request_digest
from unlearn.requests.ledger import Ledger, LedgerError
from unlearn.requests.parsing import (
    FIELDS,
    MAX_FILE_BYTES,
    NOT_AN_OBJECT,
    RAGGED_ROW,
    FileProblem,
    ParsedFile,
    RawRequest,
    file_sha256,
    parse_request_bytes,
    parse_request_file,
    sanitize_file_name,
    skipped_in_inbox,
)
from unlearn.requests.routing import RequestRouter, Routing

__all__ = [
    "FIELDS", "MAX_FILE_BYTES", "NOT_AN_OBJECT", "RAGGED_ROW", "FileProblem", "Ledger", "LedgerError", "ParsedFile",
    "RawRequest", "RequestRouter", "Routing", "content_digest", "file_sha256", "hash_ids", "hash_subject",
    "load_or_create_salt", "request_digest",
    "parse_request_bytes", "parse_request_file", "sanitize_file_name", "skipped_in_inbox",
]
