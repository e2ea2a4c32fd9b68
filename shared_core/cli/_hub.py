"""``tensafe push`` and ``tensafe pull``: publish a verified TSSP package on the Hugging Face Hub and fetch one back.

The token is read from ``HF_TOKEN`` (or the client's stored login), never from a flag: flags end up in shell history
and process lists. Heavy imports (huggingface_hub, the verifier) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]

_MESSAGE = "Upload DP-trained LoRA adapter (TSSP package)"


def _run(action: Any) -> Any:
    from shared_core.cli._common import fail
    from shared_core.errors import TensafeError

    try:
        return action()
    except TensafeError as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    """Add ``push`` and ``pull`` to ``app``."""

    @app.command("push")
    def push(
        package: Annotated[Path, typer.Argument(help="The X.tssp package folder to publish.")],
        repo_id: Annotated[str, typer.Option("--repo-id", help="Hub repository, namespace/name.")],
        public_key: Annotated[
            Path | None, typer.Option("--public-key", help="Pinned public keys to verify with (key folder or file).")
        ] = None,
        private: Annotated[bool, typer.Option("--private/--public", help="Visibility of a NEW repo.")] = True,
        message: Annotated[str, typer.Option("--message", "-m", help="Commit summary.")] = _MESSAGE,
        include_encrypted_weights: Annotated[
            bool, typer.Option("--include-encrypted-weights", help="Upload the encrypted weights too.")
        ] = False,
        no_card: Annotated[bool, typer.Option("--no-card", help="Do not generate README.md (model card).")] = False,
        license_id: Annotated[str, typer.Option("--license", help="Hub license id for the card.")] = "apache-2.0",
        endpoint: Annotated[str | None, typer.Option("--endpoint", help="Hub URL (default: HF_ENDPOINT).")] = None,
    ) -> None:
        """Verify PACKAGE, then upload it with a generated model card to --repo-id in one commit (token: HF_TOKEN)."""

        def action() -> str:
            from shared_core.hub import TenSafeHFHubConfig, TenSafeHFHubIntegration

            config = TenSafeHFHubConfig(
                private=private,
                include_encrypted_weights=include_encrypted_weights,
                generate_model_card=not no_card,
                license=license_id,
                public_key=str(public_key) if public_key is not None else None,
                endpoint=endpoint,
            )
            return TenSafeHFHubIntegration(config=config).push_to_hub(package, repo_id, commit_message=message)

        url = _run(action)
        typer.echo(url)

    @app.command("pull")
    def pull(
        repo_id: Annotated[str, typer.Argument(help="Hub repository, namespace/name.")],
        local_dir: Annotated[Path, typer.Option("--local-dir", help="Where the verified package folder goes.")],
        public_key: Annotated[
            Path, typer.Option("--public-key", help="The publisher's pinned public keys (key folder or file).")
        ],
        revision: Annotated[str | None, typer.Option("--revision", help="Branch, tag or commit SHA.")] = None,
        endpoint: Annotated[str | None, typer.Option("--endpoint", help="Hub URL (default: HF_ENDPOINT).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the verified manifest as JSON.")] = False,
    ) -> None:
        """Download REPO_ID, verify every file and both signatures, and only then place it at --local-dir."""

        def action() -> dict[str, Any]:
            from shared_core.hub import TenSafeHFHubConfig, TenSafeHFHubIntegration

            config = TenSafeHFHubConfig(public_key=str(public_key), endpoint=endpoint)
            return TenSafeHFHubIntegration(config=config).pull_from_hub(repo_id, local_dir, revision=revision)

        manifest = _run(action)
        if as_json:
            from shared_core.cli._common import echo_json

            echo_json(manifest)
            return
        privacy = manifest["privacy"]
        typer.echo(
            f"verified {repo_id}@{manifest['revision'][:12]} -> {manifest['local_dir']} "
            f"(epsilon={privacy.get('epsilon')!r}, delta={privacy.get('delta')!r}, "
            f"manifest sha256:{manifest['manifest_sha256']})"
        )
