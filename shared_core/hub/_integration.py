"""Push, pull and list TSSP packages on the Hugging Face Hub with the real ``huggingface_hub`` client.

Push: verify the package with the pinned keys, read the exact verified bytes, generate the model card from the
certificate, scan everything that will leave the machine for secrets, then upload in ONE ``create_commit`` (with the
previous head as ``parent_commit``), so a failed push leaves the repository as it was and a rerun is a no-op.

Pull: download one pinned commit into a fresh private temporary folder, verify signatures and every file there, and
only then move the package to ``local_dir`` and return its manifest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from shared_core._imports import require
from shared_core.errors import ConfigError, VerificationError
from shared_core.hub._card import build_card_text, card_metadata_problems, certificate_figures, check_privacy_info
from shared_core.hub._config import HubError, HubUnavailableError, TenSafeHFHubConfig
from shared_core.hub._package import PackageView, file_sha256, read_package, read_regular_file
from shared_core.hub._ranks import run_on_rank_zero

__all__ = ["TenSafeHFHubIntegration"]

logger = logging.getLogger(__name__)

_ENVELOPE = "tssp.dsse.json"
_CARD = "README.md"
_REPO_ONLY = frozenset({_CARD, ".gitattributes"})  # repo files that are not part of the signed package
_TRUE = frozenset({"1", "true", "yes", "on"})
_DEFAULT_MESSAGE = "Upload DP-trained LoRA adapter (TSSP package)"
_CONNECT_TIMEOUT_ENV = "TENSAFE_HUB_CONNECT_TIMEOUT"


def _hf() -> Any:
    return require("huggingface_hub", extra="mlops")


def _hf_constants() -> Any:
    # A submodule of the lazily-initialised package: import it explicitly rather than as an attribute.
    return require("huggingface_hub.constants", extra="mlops")


class TenSafeHFHubIntegration:
    """Publish verified TSSP packages to the Hub and fetch them back verified.

    Args:
        config: settings; the defaults give a private repo, verification before push and a generated card.

    Example:
        >>> hub = TenSafeHFHubIntegration(config=TenSafeHFHubConfig(public_key="keys/"))  # doctest: +SKIP
        >>> url = hub.push_to_hub("adapter.tssp", "alice/llama3-lora-dp")  # doctest: +SKIP
    """

    def __init__(self, config: TenSafeHFHubConfig | None = None) -> None:
        self.config = config if config is not None else TenSafeHFHubConfig()

    # ------------------------------------------------------------------------------------------------ settings
    @property
    def endpoint(self) -> str:
        """The Hub URL: the config's, else ``HF_ENDPOINT`` read now, else ``https://huggingface.co``."""
        if self.config.endpoint:
            return self.config.endpoint.rstrip("/")
        return (os.environ.get("HF_ENDPOINT") or _hf_constants().ENDPOINT).rstrip("/")

    def _token(self) -> str | None:
        return self.config.token or os.environ.get("HF_TOKEN") or None

    def _api(self) -> Any:
        from shared_core import __version__

        return _hf().HfApi(endpoint=self.endpoint, token=self._token(), library_name="tensafe",
                           library_version=__version__)

    def _trusted(self, *, purpose: str) -> Any:
        if not self.config.public_key:
            raise ConfigError(
                f"{purpose} needs the publisher's pinned public keys: set TenSafeHFHubConfig(public_key=KEYDIR) or "
                "pass --public-key KEYDIR (a key folder with ed25519.pub and mldsa65.pub, or a trusted-keys JSON file)"
            )
        from shared_core.tssp.keys import load_trusted_keys

        return load_trusted_keys(self.config.public_key)

    def _redact(self, text: str) -> str:
        token = self._token()
        if token:
            text = text.replace(token, "***")
        from shared_core.mlops.redaction import redact_text

        return redact_text(text)

    def _offline_reason(self) -> str | None:
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or _hf_constants().HF_HUB_OFFLINE:
            return "offline mode is on (HF_HUB_OFFLINE=1)"
        return None

    def _unreachable_reason(self) -> str | None:
        """Why the endpoint cannot be reached now (a short TCP probe), or ``None``."""
        offline = self._offline_reason()
        if offline:
            return offline
        parts = urlsplit(self.endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        timeout = float(os.environ.get(_CONNECT_TIMEOUT_ENV, "5"))
        try:
            with socket.create_connection((parts.hostname or "", port), timeout=timeout):
                return None
        except OSError as exc:
            return f"{self.endpoint} is not reachable ({exc.strerror or type(exc).__name__})"

    @contextlib.contextmanager
    def _hub_errors(self, what: str, *, unavailable_hint: str, failed_hint: str) -> Iterator[None]:
        """Turn client/transport errors into one-line TenSafe errors with the token scrubbed."""
        errors = require("huggingface_hub.errors", extra="mlops")
        httpx = require("httpx2", extra="mlops")
        try:
            yield
        except errors.OfflineModeIsEnabled:
            self._raise(HubUnavailableError, f"cannot {what}: offline mode is on (HF_HUB_OFFLINE=1). "
                        f"{unavailable_hint}")
        except (httpx.TransportError, ConnectionError) as exc:
            self._raise(HubUnavailableError, f"cannot {what}: {self.endpoint} is not reachable ({exc}). "
                        f"{unavailable_hint}")
        except errors.RepositoryNotFoundError:
            self._raise(HubError, f"cannot {what}: repository not found at {self.endpoint} (or it is private and the "
                        f"token has no access; set HF_TOKEN). {failed_hint}")
        except errors.RevisionNotFoundError:
            self._raise(HubError, f"cannot {what}: revision not found. {failed_hint}")
        except errors.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            detail = exc.server_message or str(exc).splitlines()[0]
            self._raise(HubError, f"cannot {what}: the Hub answered HTTP {status} ({detail}). {failed_hint}")

    def _raise(self, kind: type[Exception], message: str) -> NoReturn:
        # ``from None``: the chained client exception holds the request, whose headers carry the token.
        raise kind(self._redact(message)) from None

    # ---------------------------------------------------------------------------------------------------- push
    def push_to_hub(
        self,
        tssp_package_path: str | os.PathLike[str],
        repo_id: str,
        commit_message: str = _DEFAULT_MESSAGE,
        privacy_info: Mapping[str, Any] | None = None,
    ) -> str:
        """Upload a verified TSSP package and its model card to ``repo_id`` in a single commit.

        In a multi-process job (``torch.distributed`` initialised, or ``RANK``/``WORLD_SIZE`` set) only rank zero
        uploads; the other ranks wait for it and return the same URL (or raise the same error).

        Args:
            tssp_package_path: the ``X.tssp`` package folder.
            repo_id: ``namespace/name`` on the Hub.
            commit_message: summary of the commit.
            privacy_info: extra privacy fields for the card. A field the certificate holds must agree with it (the
                card always shows the certificate's value); others are shown as publisher-supplied.

        Returns:
            The repository URL.

        Raises:
            ConfigError: bad arguments, a ``privacy_info`` contradicting the certificate, or an existing public repo
                while ``private=True``.
            VerificationError: the package fails verification, or a file to upload contains a secret (named).
            HubUnavailableError: offline or unreachable; nothing was uploaded (the message says how to push later).
            HubError: the Hub refused a request; the repository is unchanged.
        """
        return run_on_rank_zero(
            lambda: self._push(Path(tssp_package_path), repo_id, commit_message, privacy_info),
            what=f"push to {repo_id}",
        )

    def _push_later_hint(self, package: Path, repo_id: str) -> str:
        key = f" --public-key {self.config.public_key}" if self.config.public_key else ""
        visibility = "" if self.config.private else " --public"
        return (
            f"Nothing was uploaded; the package stays staged at {package}. Push it later with: "
            f"tensafe push {package} --repo-id {repo_id}{key}{visibility}"
        )

    def _push(self, package: Path, repo_id: str, commit_message: str, privacy_info: Mapping[str, Any] | None) -> str:
        _check_repo_id(repo_id)
        if not commit_message:
            raise ConfigError("commit_message must not be empty")
        offline = self._offline_reason()
        if offline:
            raise HubUnavailableError(f"cannot push to {repo_id}: {offline}. {self._push_later_hint(package, repo_id)}")
        trusted = self._trusted(purpose="push") if self.config.require_tssp_verification else None
        if trusted is None:
            logger.warning("pushing %s without verifying it (require_tssp_verification=False)", package)
        view = read_package(package, trusted=trusted, include_encrypted_weights=self.config.include_encrypted_weights)
        uploads = list(view.uploads)
        if self.config.generate_model_card and any(name == _CARD for name, _ in uploads):
            raise ConfigError(
                f"{package} has its own signed {_CARD}, which would clash with the generated model card; push with "
                "generate_model_card=False (--no-card) to publish the package's README.md as the card"
            )
        if self.config.generate_model_card:
            uploads.append((_CARD, self._card(view, repo_id, privacy_info).encode("utf-8")))
        elif privacy_info:
            check_privacy_info(privacy_info, certificate_figures(view.certificate))
        self._scan(uploads)
        reason = self._unreachable_reason()
        if reason:
            raise HubUnavailableError(f"cannot push to {repo_id}: {reason}. {self._push_later_hint(package, repo_id)}")
        with self._hub_errors(
            f"push to {repo_id}",
            unavailable_hint=self._push_later_hint(package, repo_id),
            failed_hint="The repository was left as it was (single commit); fix the cause and rerun the same push.",
        ):
            return self._commit(view, uploads, repo_id, commit_message)

    def _card(self, view: PackageView, repo_id: str, privacy_info: Mapping[str, Any] | None) -> str:
        hf = _hf()
        extra = check_privacy_info(privacy_info, certificate_figures(view.certificate))
        metadata, body = build_card_text(
            repo_id=repo_id,
            manifest=view.manifest,
            manifest_sha256=view.manifest_sha256,
            certificate=view.certificate,
            extra_privacy=extra,
            license_id=self.config.license,
            language=self.config.language,
            encrypted=view.encrypted,
            weights_included=view.weights_included,
            verified=view.verified,
        )
        data = hf.ModelCardData(**metadata)
        card = hf.ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
        problems = card_metadata_problems(card.data.to_dict())
        if problems:
            raise ConfigError(f"the generated model card metadata is invalid: {'; '.join(problems)}")
        return str(card)

    def _scan(self, uploads: list[tuple[str, bytes]]) -> None:
        from shared_core.mlops.redaction import find_secrets, secret_values_from_env

        canaries = [c for c in [self._token(), *secret_values_from_env()] if c]
        for name, data in uploads:
            findings = find_secrets(data, canaries=canaries)
            if findings:
                raise VerificationError(
                    f"{name} contains what looks like a secret ({'; '.join(findings[:3])}); nothing was uploaded. "
                    "Remove it from the package (re-pack) or the card input, then push again",
                    path=name,
                    check="secret-scan",
                )

    def _commit(self, view: PackageView, uploads: list[tuple[str, bytes]], repo_id: str, message: str) -> str:
        api = self._api()
        repo_type = self.config.repo_type
        existed = api.repo_exists(repo_id, repo_type=repo_type)
        url = api.create_repo(repo_id, repo_type=repo_type, private=self.config.private, exist_ok=True)
        try:
            return self._commit_to(api, view, uploads, repo_id, message, url=str(url))
        except BaseException:
            if not existed:  # a first push that failed leaves no repo behind, not an empty one
                try:
                    api.delete_repo(repo_id, repo_type=repo_type, missing_ok=True)
                except Exception as exc:  # the commit's error is the one to report
                    logger.warning("could not remove the empty repository %s after the failed push: %s", repo_id, exc)
            raise

    def _commit_to(
        self, api: Any, view: PackageView, uploads: list[tuple[str, bytes]], repo_id: str, message: str, *, url: str
    ) -> str:
        hf = _hf()
        repo_type = self.config.repo_type
        info = api.repo_info(repo_id, repo_type=repo_type)
        if self.config.private and info.private is False:
            raise ConfigError(
                f"{repo_id} already exists and is PUBLIC, but private=True; nothing was uploaded. Make the repo "
                "private on the Hub first, or push with private=False (--public) if publishing it openly is intended"
            )
        names = {name for name, _ in uploads}
        keep = set(_REPO_ONLY) if not self.config.generate_model_card else {".gitattributes"}
        stale = sorted(s.rfilename for s in (info.siblings or []) if s.rfilename not in names | keep)
        operations = [hf.CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in uploads]
        operations += [hf.CommitOperationDelete(path_in_repo=name) for name in stale]
        result = api.create_commit(
            repo_id,
            operations,
            commit_message=message,
            commit_description=f"TSSP manifest sha256:{view.manifest_sha256}",
            repo_type=repo_type,
            parent_commit=info.sha,
        )
        changed = result.oid != info.sha
        logger.info(
            "%s %s (manifest sha256:%s, %d files%s)",
            "pushed to" if changed else "already up to date:",
            url,
            view.manifest_sha256,
            len(uploads),
            f", removed {len(stale)} stale" if stale else "",
        )
        return url

    # ---------------------------------------------------------------------------------------------------- pull
    def pull_from_hub(
        self,
        repo_id: str,
        local_dir: str | os.PathLike[str],
        verify: bool = True,
        revision: str | None = None,
    ) -> dict[str, Any]:
        """Download a package, verify it, then place it at ``local_dir`` and return its manifest.

        The files of one commit (``revision`` resolved once to a commit SHA) are downloaded into a fresh private
        temporary folder next to ``local_dir`` and verified there with the pinned ``config.public_key``: both
        signatures, then every file's size and SHA-256 (and the set of files). Only then is the package moved to
        ``local_dir`` (which must be new, empty, or a previously pulled package, replaced). On any failure nothing
        is written to ``local_dir`` and the download is deleted.

        Args:
            repo_id: ``namespace/name``.
            local_dir: where the verified package folder goes.
            verify: must be ``True``; a pulled package is always verified.
            revision: branch, tag or commit SHA (default ``main``).

        Returns:
            The signed manifest (``schema``, ``package``, ``files``, ``dp`` ... as signed; ``dp`` values are the
            manifest's strings), plus: ``privacy``: the DP certificate's figures, with ``epsilon`` and ``delta`` as
            floats parsed from the verified certificate's ``privacy_guarantee`` (not from the card);
            ``manifest_sha256``; ``repo_id``; ``revision`` (the commit SHA pulled); ``local_dir``.

        Raises:
            ConfigError: ``verify=False``, no public key, or a ``local_dir`` holding something else.
            VerificationError: a file was changed after publishing (named in the message and ``.path``), a signature
                fails, or the card contradicts the certificate.
            HubUnavailableError: offline or unreachable.
            HubError: the repository or revision does not exist, or the Hub refused a request.
        """
        if not verify:
            raise ConfigError(
                "verify=False is not supported: a pulled package is always verified before it is kept; pass the "
                "publisher's public key (TenSafeHFHubConfig(public_key=...) / --public-key)"
            )
        _check_repo_id(repo_id)
        trusted = self._trusted(purpose="pull")
        target = Path(local_dir).expanduser().absolute()
        _check_target(target)
        reason = self._unreachable_reason()
        hint = f"Nothing was written to {target}."
        if reason:
            raise HubUnavailableError(f"cannot pull {repo_id}: {reason}. {hint}")
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.pull-", dir=target.parent))
        try:
            with self._hub_errors(f"pull {repo_id}", unavailable_hint=hint, failed_hint=hint):
                commit = self._download(repo_id, revision, work)
            package = work / "package"
            try:
                card = _separate_repo_files(package, trusted, repo_id)
                manifest, digest, certificate = _verify_download(package, trusted)
                if card is not None:
                    _check_card(card, digest, certificate)
            except VerificationError as exc:
                raise VerificationError(
                    f"{repo_id}@{commit[:12]} failed verification: {exc}. The download was deleted; nothing was "
                    f"written to {target}",
                    path=exc.path,
                    check=exc.check,
                ) from None
            _place(package, target, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        logger.info("pulled and verified %s@%s into %s (manifest sha256:%s)", repo_id, commit[:12], target, digest)
        result = dict(manifest)
        result["privacy"] = _privacy_of(certificate)
        result["manifest_sha256"] = digest
        result["repo_id"] = repo_id
        result["revision"] = commit
        result["local_dir"] = str(target)
        return result

    def _download(self, repo_id: str, revision: str | None, work: Path) -> str:
        """Download one commit into ``work/package`` (the card included); returns the commit SHA."""
        hf = _hf()
        api = self._api()
        info = api.repo_info(repo_id, repo_type=self.config.repo_type, revision=revision)
        commit = str(info.sha)
        download = work / "download"
        hf.snapshot_download(
            repo_id,
            repo_type=self.config.repo_type,
            revision=commit,
            local_dir=download,
            cache_dir=work / "cache",
            endpoint=self.endpoint,
            token=self._token(),
            library_name="tensafe",
        )
        package = work / "package"
        package.mkdir()
        for file in sorted(download.rglob("*")):
            rel = file.relative_to(download).as_posix()
            if rel.split("/")[0] == ".cache" or not file.is_file() or file.is_symlink():
                continue
            if rel == ".gitattributes":
                continue
            (package / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, package / rel)
        return commit

    # ---------------------------------------------------------------------------------------------------- list
    def list_models(self, author: str | None = None) -> list[dict[str, Any]]:
        """TenSafe models (repos tagged ``tensafe``) visible with the current token, optionally of one author.

        Returns:
            One dict per repo: ``id``, ``author``, ``url``, ``private``, ``downloads``, ``likes``, ``last_modified``
            (ISO 8601 or ``None``), ``sha``, ``tags``, ``library_name`` and ``privacy``: the card's
            ``differential_privacy`` metadata as claimed by the card (unverified until pulled; may be empty).

        Raises:
            HubUnavailableError: offline or unreachable.
            HubError: the Hub refused the request.
        """
        reason = self._unreachable_reason()
        if reason:
            raise HubUnavailableError(f"cannot list models: {reason}")
        with self._hub_errors("list models", unavailable_hint="", failed_hint=""):
            api = self._api()
            models = list(api.list_models(author=author, filter="tensafe", cardData=True))
        out = []
        for model in models:
            card = model.card_data.to_dict() if model.card_data is not None else {}
            claim = card.get("differential_privacy")
            out.append(
                {
                    "id": model.id,
                    "author": model.author or model.id.split("/")[0],
                    "url": f"{self.endpoint}/{model.id}",
                    "private": model.private,
                    "downloads": model.downloads or 0,
                    "likes": model.likes or 0,
                    "last_modified": model.last_modified.isoformat() if model.last_modified else None,
                    "sha": model.sha,
                    "tags": list(model.tags or []),
                    "library_name": model.library_name,
                    "privacy": dict(claim) if isinstance(claim, Mapping) else {},
                }
            )
        return out


# --------------------------------------------------------------------------------------------------- helpers
def _check_repo_id(repo_id: str) -> None:
    from shared_core.hub._card import _HUB_ID

    if not isinstance(repo_id, str) or "/" not in repo_id or not _HUB_ID.match(repo_id):
        raise ConfigError(f"repo_id={repo_id!r} is not a Hub repo id; use 'namespace/name' (e.g. 'alice/my-adapter')")


def _check_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or target.is_symlink()):
        raise ConfigError(f"local_dir {target} exists and is not a folder; pass a new or empty folder")
    if target.is_dir() and any(target.iterdir()) and not (target / _ENVELOPE).is_file():
        raise ConfigError(
            f"local_dir {target} is not empty and does not hold a TSSP package; pass a new or empty folder "
            "(a folder holding a previously pulled package is replaced)"
        )


def _separate_repo_files(package: Path, trusted: Any, repo_id: str) -> str | None:
    """Take the repo-level card out of the package folder unless the signed manifest lists a README.md itself.

    Returns the card text when README.md is the repo's card, else ``None``. Also refuses, with a clear message, a
    repository that holds a package without its encrypted weights (published with ``include_encrypted_weights=False``).
    """
    from shared_core.tssp._manifest import PAYLOAD_TYPE, parse_manifest, stored_name
    from shared_core.tssp.signing import open_envelope

    envelope = package / _ENVELOPE
    if not envelope.is_file():
        raise VerificationError(f"the repository has no {_ENVELOPE}; it is not a TSSP package", path=_ENVELOPE,
                                check="files")
    payload = open_envelope(read_regular_file(envelope, limit=4 * 1024 * 1024), payload_type=PAYLOAD_TYPE,
                            trusted=trusted)
    entries = parse_manifest(payload, trusted=trusted)["files"]
    card: str | None = None
    if _CARD not in {stored_name(e) for e in entries} and (package / _CARD).is_file():
        card = (package / _CARD).read_text("utf-8", "replace")
        (package / _CARD).unlink()
    missing = sorted(
        stored_name(e) for e in entries if e.get("role") == "weights" and not (package / stored_name(e)).exists()
    )
    if missing and all("stored_path" in e for e in entries if stored_name(e) in missing):
        raise HubError(
            f"{repo_id} holds the signed manifest, certificate and reports but not the encrypted weights "
            f"({', '.join(missing)}): it was published with include_encrypted_weights=False. Get the package from "
            "the publisher, or ask them to push with --include-encrypted-weights; nothing was written"
        )
    return card


def _verify_download(package: Path, trusted: Any) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Verify the downloaded package; returns (manifest, manifest digest, certificate)."""
    from shared_core.tssp._manifest import PAYLOAD_TYPE
    from shared_core.tssp.signing import open_envelope
    from shared_core.tssp.verify import verify_package

    if not (package / _ENVELOPE).is_file():
        raise VerificationError(f"the repository has no {_ENVELOPE}; it is not a TSSP package", path=_ENVELOPE,
                                check="files")
    manifest = dict(verify_package(package, trusted=trusted))
    payload = open_envelope(read_regular_file(package / _ENVELOPE, limit=4 * 1024 * 1024), payload_type=PAYLOAD_TYPE,
                            trusted=trusted)
    certificate: dict[str, Any] = {}
    for entry in manifest["files"]:
        if entry.get("role") == "dp-certificate" and "stored_path" not in entry:
            data = read_regular_file(package / entry["path"], limit=int(entry["size"]))
            if file_sha256(data) != entry["sha256"]:
                raise VerificationError(f"{entry['path']} changed during verification", path=entry["path"],
                                        check="digest")
            certificate = json.loads(data)
    return manifest, file_sha256(payload), certificate


def _check_card(card: str, digest: str, certificate: Mapping[str, Any]) -> None:
    """The card is not signed; refuse one whose TenSafe metadata names another package or other figures."""
    import yaml

    if not card.startswith("---\n") or "\n---" not in card[4:]:
        return
    try:
        meta = yaml.safe_load(card[4:card.index("\n---", 4)])
    except yaml.YAMLError:
        return
    if not isinstance(meta, dict):
        return
    tensafe = meta.get("tensafe")
    if isinstance(tensafe, dict) and tensafe.get("manifest_sha256") not in (None, digest):
        raise VerificationError(
            f"{_CARD} describes another package (manifest sha256 {tensafe.get('manifest_sha256')}, verified {digest})",
            path=_CARD,
            check="model-card",
        )
    claim = meta.get("differential_privacy")
    if isinstance(claim, dict) and certificate:
        from shared_core.hub._card import _same

        figures = certificate_figures(certificate)
        for key, value in claim.items():
            if key in figures and not _same(value, figures[key]):
                raise VerificationError(
                    f"{_CARD} claims {key}={value!r} but the signed certificate says {figures[key]!r}",
                    path=_CARD,
                    check="model-card",
                )


def _privacy_of(certificate: Mapping[str, Any]) -> dict[str, Any]:
    figures = certificate_figures(certificate) if certificate else {}
    privacy: dict[str, Any] = dict(figures)
    for key in ("epsilon", "delta"):
        if key in privacy:
            privacy[key] = float(privacy[key])
    privacy["source"] = "dp_certificate.json"
    return privacy


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _place(package: Path, target: Path, work: Path) -> None:
    """Move the verified package folder to ``target`` (replacing a previously pulled package there)."""
    _fsync_tree(package)
    if target.is_dir():
        if any(target.iterdir()):
            os.replace(target, work / "previous")
        else:
            target.rmdir()
    os.replace(package, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
