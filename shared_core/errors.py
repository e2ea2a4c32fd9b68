"""Errors and warnings raised by TenSafe.

Every error carries a message that says what was wrong, the offending value and what to do instead.
The tree is small on purpose::

    TensafeError
    ├── ConfigError(ValueError)          bad settings: a DPConfig field, a YAML key, a CLI flag
    ├── PrivacyError(RuntimeError)       a DP guarantee would not hold (sampler, preflight, ledger)
    │   ├── BudgetExhaustedError         the next update would take epsilon past the target
    │   └── LedgerError                  missing or mismatched accountant state on resume
    ├── VerificationError(ValueError)    a package, signature or certificate failed a check
    └── MissingDependencyError(ImportError)  an optional extra is not installed

``PrivacyWarning`` marks something legal that weakens the guarantee (the tests turn it into an error).
"""

from __future__ import annotations

__all__ = [
    "BudgetExhaustedError",
    "ConfigError",
    "LedgerError",
    "MissingDependencyError",
    "PrivacyError",
    "PrivacyWarning",
    "TensafeError",
    "VerificationError",
]


class TensafeError(Exception):
    """Root of every error TenSafe raises on purpose."""


class ConfigError(TensafeError, ValueError):
    """A setting is invalid; the message names the field, the value and the fix."""


class PrivacyError(TensafeError, RuntimeError):
    """Training or certification would not satisfy the stated DP guarantee."""


class BudgetExhaustedError(PrivacyError):
    """The next optimizer update would spend more epsilon than the target allows."""


class LedgerError(PrivacyError):
    """The privacy ledger is missing, corrupt or does not match the run being resumed."""


class VerificationError(TensafeError, ValueError):
    """A package, signature, manifest or certificate check failed.

    ``path`` names the file (relative to the package) and ``check`` the check that failed, when known.
    """

    def __init__(self, message: str, *, path: str | None = None, check: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.check = check


class MissingDependencyError(TensafeError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class PrivacyWarning(UserWarning):
    """Something is allowed but weakens or voids the privacy guarantee."""
