"""DP certificates: build and sign one from a run's privacy ledger, verify it without torch, write the report.

Note:
    A certificate states an (epsilon, delta) guarantee under the add-or-remove-one neighbouring relation, one
    training example as the privacy unit, for DP-SGD with Poisson sampling; its ``not_covered`` list says what
    the guarantee does not extend to. Verification re-derives epsilon with ``dp_accounting`` and never imports
    torch or transformers.
"""

from __future__ import annotations

from shared_core.certificate._schema import (
    CERTIFICATE_PAYLOAD_TYPE,
    CERTIFICATE_SCHEMA,
    dp_event_description,
    dp_event_from_description,
    load_certificate_json,
    parse_certificate_json,
)
from shared_core.certificate.build import build_certificate, canonical_payload, save_certificate, sign_certificate
from shared_core.certificate.report import write_privacy_report
from shared_core.certificate.verify import CertificateCheck, verify_certificate

__all__ = [
    "CERTIFICATE_PAYLOAD_TYPE",
    "CERTIFICATE_SCHEMA",
    "CertificateCheck",
    "build_certificate",
    "canonical_payload",
    "dp_event_description",
    "dp_event_from_description",
    "load_certificate_json",
    "parse_certificate_json",
    "save_certificate",
    "sign_certificate",
    "verify_certificate",
    "write_privacy_report",
]
