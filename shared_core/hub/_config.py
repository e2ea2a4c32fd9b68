"""Settings of the Hub integration and the error raised when the Hub cannot be reached."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared_core.errors import ConfigError, TensafeError

__all__ = ["HubError", "HubUnavailableError", "TenSafeHFHubConfig"]

_REPO_TYPES = ("model", "dataset", "space")
_LANGUAGE = re.compile(r"\A[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*\Z")


class HubError(TensafeError, RuntimeError):
    """A Hub request failed; the message says what failed and what state the repository was left in."""


class HubUnavailableError(HubError, ConnectionError):
    """The Hub is offline or unreachable; nothing was uploaded and the message says how to push later."""


@dataclass(frozen=True)
class TenSafeHFHubConfig:
    """How :class:`~shared_core.hub.TenSafeHFHubIntegration` talks to the Hugging Face Hub.

    Attributes:
        token: Hub access token. ``None`` reads ``HF_TOKEN`` at call time (then the client's stored login). It is sent
            only in the ``Authorization`` header and never appears in an error, a log line or the model card.
        private: create new repositories private (the default). An existing repository's visibility is never
            changed; pushing into an existing *public* repository with ``private=True`` is refused.
        repo_type: ``"model"`` (default), ``"dataset"`` or ``"space"``.
        require_tssp_verification: verify the package (both signatures with ``public_key``, every file) before
            anything is uploaded.
        include_encrypted_weights: upload the encrypted weights of an encrypted package. Off by default: the repo
            then holds the signed manifest, certificate, reports and card, and the weights travel separately.
            Plaintext weights are uploaded only for a package that is not encrypted.
        generate_model_card: write ``README.md`` (a Hub model card generated from the verified certificate).
        license: a Hub license id for the card (``"apache-2.0"``, ``"mit"``, ...).
        language: ISO 639 code of the card's language.
        public_key: the pinned public keys used to verify: a key directory (``ed25519.pub`` + ``mldsa65.pub``) or a
            trusted-keys JSON file. Required to pull, and to push with ``require_tssp_verification``.
        endpoint: Hub URL; ``None`` reads ``HF_ENDPOINT`` at call time, else ``https://huggingface.co``.
    """

    token: str | None = None
    private: bool = True
    repo_type: str = "model"
    require_tssp_verification: bool = True
    include_encrypted_weights: bool = False
    generate_model_card: bool = True
    license: str = "apache-2.0"
    language: str = "en"
    public_key: str | None = None
    endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.repo_type not in _REPO_TYPES:
            raise ConfigError(f"repo_type={self.repo_type!r} is not valid; use one of {', '.join(_REPO_TYPES)}")
        if not _LANGUAGE.match(self.language):
            raise ConfigError(f"language={self.language!r} is not an ISO 639 code; use e.g. 'en' or 'de'")
        if self.endpoint is not None and not re.match(r"\Ahttps?://[^\s/]+", self.endpoint):
            raise ConfigError(f"endpoint={self.endpoint!r} is not an http(s) URL; use e.g. 'https://huggingface.co'")
        from shared_core.hub._card import check_license

        check_license(self.license)

    def __repr__(self) -> str:
        # The token must never be printed (repr ends up in logs and tracebacks).
        shown = "***" if self.token else None
        return (
            f"TenSafeHFHubConfig(token={shown!r}, private={self.private}, repo_type={self.repo_type!r}, "
            f"require_tssp_verification={self.require_tssp_verification}, "
            f"include_encrypted_weights={self.include_encrypted_weights}, "
            f"generate_model_card={self.generate_model_card}, license={self.license!r}, language={self.language!r}, "
            f"public_key={self.public_key!r}, endpoint={self.endpoint!r})"
        )
