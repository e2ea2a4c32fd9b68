"""``tensafe keygen``, ``pack``, ``verify`` and ``inspect``: the TenSafe Secure Package on the command line.

Secrets never come from flags (they end up in shell history and process lists): a passphrase is read from the
environment variable named by ``--passphrase-env``, an encryption key from a file or a named environment variable.
Heavy modules are imported inside the commands, and ``verify`` / ``inspect`` never import torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]


def _run(action: Any) -> Any:
    from shared_core.cli._common import fail
    from shared_core.errors import ConfigError, VerificationError

    try:
        return action()
    except VerificationError as exc:
        where = f" [{exc.check}]" if exc.check else ""
        fail(f"verification failed{where}: {exc}")
    except ConfigError as exc:
        fail(str(exc))


def _secret_from_env(var: str | None, what: str) -> str | None:
    from shared_core.errors import ConfigError

    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"environment variable {var} (named by --{what}-env) is not set or empty")
    return value


def _read_cek(path: Path | None, env: str | None, flag: str) -> bytes | None:
    """A 32-byte key from a file (raw bytes or base64 text) or from an env var (base64)."""
    import base64
    import binascii

    from shared_core.errors import ConfigError

    if path is not None and env is not None:
        raise ConfigError(f"give either --{flag}-file or --{flag}-env, not both")
    if path is None and env is None:
        return None
    if path is not None:
        try:
            raw = path.read_bytes()[:1024]
        except OSError as exc:
            raise ConfigError(f"cannot read key file {path} ({exc.strerror})") from None
        source = str(path)
    else:
        raw = (_secret_from_env(env, flag) or "").encode()
        source = f"${env}"
    if len(raw) == 32:
        return raw
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(
            f"{source} does not hold a 32-byte key (32 raw bytes or their base64); "
            "create one with `tensafe keygen --out KEYDIR --encryption-key FILE`"
        )
    return key


def _write_cek(path: Path) -> None:
    import base64

    from shared_core.errors import ConfigError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise ConfigError(f"refusing to overwrite the existing key file {path}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64encode(os.urandom(32)) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def register(app: typer.Typer) -> None:
    """Add ``keygen``, ``pack``, ``verify`` and ``inspect`` to ``app``."""

    @app.command("keygen")
    def keygen(
        out: Annotated[Path, typer.Option("--out", help="Key folder to create (must not hold keys yet).")],
        passphrase_env: Annotated[
            str | None, typer.Option("--passphrase-env", help="Env var holding a passphrase to protect the keys.")
        ] = None,
        encryption_key: Annotated[
            Path | None, typer.Option("--encryption-key", help="Also write a new 32-byte package encryption key.")
        ] = None,
    ) -> None:
        """Generate the Ed25519 + ML-DSA-65 signing keys (private 0600, public SPKI PEM)."""

        def action() -> dict[str, str]:
            from shared_core.tssp.keys import generate_keys

            keyids = generate_keys(out, passphrase=_secret_from_env(passphrase_env, "passphrase"))
            if encryption_key is not None:
                _write_cek(encryption_key)
            return keyids

        keyids = _run(action)
        for alg, keyid in keyids.items():
            typer.echo(f"{alg}: {keyid}")
        typer.echo(f"keys written to {out}; share only the .pub files (verifiers pin them)")
        if encryption_key is not None:
            typer.echo(f"encryption key written to {encryption_key} (0600); keep it secret")

    @app.command("pack")
    def pack_cmd(
        adapter_dir: Annotated[Path, typer.Argument(help="peft adapter folder (adapter_model.safetensors + config).")],
        key: Annotated[Path, typer.Option("--key", help="Signing key folder (from tensafe keygen).")],
        out: Annotated[Path, typer.Option("--out", help="Package folder to create, e.g. my-adapter.tssp.")],
        certificate: Annotated[Path | None, typer.Option("--certificate", help="DP certificate JSON.")] = None,
        privacy_report: Annotated[Path | None, typer.Option("--privacy-report", help="Privacy report JSON.")] = None,
        training_config: Annotated[
            Path | None, typer.Option("--training-config", help="Redacted training config JSON.")
        ] = None,
        encrypt: Annotated[
            bool, typer.Option("--encrypt", help="Encrypt the weights (AES-256-GCM, streamed).")
        ] = False,
        encryption_key_file: Annotated[
            Path | None, typer.Option("--encryption-key-file", help="File with the 32-byte key (raw or base64).")
        ] = None,
        encryption_key_env: Annotated[
            str | None, typer.Option("--encryption-key-env", help="Env var with the base64 32-byte key.")
        ] = None,
        archive: Annotated[bool, typer.Option("--archive", help="Also write OUT.tar for transport.")] = False,
        passphrase_env: Annotated[
            str | None, typer.Option("--passphrase-env", help="Env var holding the signing keys' passphrase.")
        ] = None,
        name: Annotated[str | None, typer.Option("--name", help="Package name (default: from --out).")] = None,
    ) -> None:
        """Sign ADAPTER_DIR into a TSSP package (atomically: all or nothing)."""

        def action() -> Path:
            import json

            from shared_core.errors import ConfigError
            from shared_core.tssp.keys import load_signing_keys
            from shared_core.tssp.packing import pack

            cek = _read_cek(encryption_key_file, encryption_key_env, "encryption-key")
            if encrypt and cek is None:
                raise ConfigError("--encrypt needs --encryption-key-file FILE or --encryption-key-env VAR")
            if cek is not None and not encrypt:
                raise ConfigError("an encryption key was given without --encrypt; add --encrypt or drop the key")
            config = None
            if training_config is not None:
                try:
                    config = json.loads(training_config.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"cannot read training config {training_config}: {exc}") from None
            keys = load_signing_keys(key, passphrase=_secret_from_env(passphrase_env, "passphrase"))
            return pack(
                adapter_dir,
                out,
                keys=keys,
                certificate=certificate,
                privacy_report=privacy_report,
                training_config=config,
                encryption_key=cek,
                archive=archive,
                name=name,
            )

        path = _run(action)
        typer.echo(f"packed {path}")
        if archive:
            typer.echo(f"archive {path.with_name(path.name + '.tar')}")

    @app.command("verify")
    def verify_cmd(
        package: Annotated[Path, typer.Argument(help="Package folder or .tar archive.")],
        public_key: Annotated[
            Path, typer.Option("--public-key", help="Pinned public keys: key folder or trusted-keys JSON.")
        ],
        decryption_key_file: Annotated[
            Path | None, typer.Option("--decryption-key-file", help="File with the 32-byte key (raw or base64).")
        ] = None,
        decryption_key_env: Annotated[
            str | None, typer.Option("--decryption-key-env", help="Env var with the base64 32-byte key.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the verified manifest as JSON.")] = False,
    ) -> None:
        """Check both signatures with the pinned keys and every file; exit 0 only if all checks pass."""

        def action() -> dict[str, Any]:
            from shared_core.tssp.keys import load_trusted_keys
            from shared_core.tssp.verify import verify_package

            trusted = load_trusted_keys(public_key)
            cek = _read_cek(decryption_key_file, decryption_key_env, "decryption-key")
            return verify_package(package, trusted=trusted, decryption_key=cek)

        manifest = _run(action)
        if as_json:
            from shared_core.cli._common import echo_json

            echo_json(manifest)
            return
        encrypted = "encryption" in manifest
        dp = manifest.get("dp")
        typer.echo(
            f"OK {package}: {manifest['package']['name']} v{manifest['package']['version']}, "
            f"{len(manifest['files'])} files, signed ed25519+ml-dsa-65 by the pinned keys"
        )
        if dp:
            typer.echo(
                f"DP claim (certificate bound to these weights): epsilon={dp['epsilon']} delta={dp['delta']} "
                f"accountant={dp['accountant']}"
            )
        if encrypted and decryption_key_file is None and decryption_key_env is None:
            typer.echo("weights are encrypted: ciphertext verified; plaintext not checked (no decryption key)")

    @app.command("inspect")
    def inspect_cmd(
        package: Annotated[Path, typer.Argument(help="Package folder or .tar archive.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Show a package's files, signers and DP claim WITHOUT verifying anything (use verify for that)."""

        def action() -> dict[str, Any]:
            from shared_core.tssp.verify import inspect_package

            return inspect_package(package)

        report = _run(action)
        if as_json:
            from shared_core.cli._common import echo_json

            echo_json(report)
            return
        typer.echo(report["warning"])
        info = report.get("package") or {}
        typer.echo(f"package: {info.get('name')} v{info.get('version')} created {info.get('created')}")
        for signer in report.get("signers") or []:
            if isinstance(signer, dict):
                typer.echo(f"signer: {signer.get('alg')} {signer.get('keyid')}")
        if report.get("dp"):
            typer.echo("DP claim: " + ", ".join(f"{k}={v}" for k, v in sorted(report["dp"].items())))
        for entry in report["files"]:
            stored = f" (stored encrypted as {entry['stored_path']})" if "stored_path" in entry else ""
            typer.echo(f"  {entry.get('role', '?'):16} {entry.get('size')!s:>12}  {entry.get('path')}{stored}")
        for problem in report["problems"]:
            typer.echo(f"problem: {problem}")
