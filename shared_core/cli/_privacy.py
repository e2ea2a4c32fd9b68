"""``tensafe epsilon``, ``noise`` and ``verify-privacy``: privacy accounting and certificate checks.

Heavy modules are imported inside the commands; ``verify-privacy`` never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]

_ACCOUNTANT_HELP = "Accountant: prv (opacus PRV, default), rdp (opacus RDP) or pld (dp_accounting PLD)."


def _guard(action: Any) -> Any:
    from shared_core.cli._common import fail
    from shared_core.errors import ConfigError, LedgerError, MissingDependencyError, VerificationError

    try:
        return action()
    except VerificationError as exc:
        where = f" [{exc.check}]" if exc.check else ""
        fail(f"privacy verification failed{where}: {exc}")
    except (ConfigError, LedgerError, MissingDependencyError) as exc:
        fail(str(exc))


def epsilon(
    sample_rate: Annotated[float, typer.Option("--sample-rate", help="Poisson rate q = expected batch / N.")],
    noise_multiplier: Annotated[float, typer.Option("--noise-multiplier", help="Noise multiplier sigma.")],
    steps: Annotated[int, typer.Option("--steps", help="Optimizer updates.")],
    delta: Annotated[float, typer.Option("--delta", help="Target delta (e.g. 1/(10 N)).")],
    accountant: Annotated[str, typer.Option("--accountant", help=_ACCOUNTANT_HELP)] = "prv",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Epsilon spent by STEPS DP-SGD updates (add/remove-one, Poisson sampling)."""
    from shared_core.accounting import compute_epsilon_detailed, epsilon_cross_check
    from shared_core.accounting._validate import check_noise_multiplier, check_sample_rate, check_steps
    from shared_core.cli._common import echo_json

    def run() -> None:
        segment = (check_sample_rate(sample_rate), check_noise_multiplier(noise_multiplier), check_steps(steps))
        result = compute_epsilon_detailed([segment], delta=delta, accountant=accountant)
        payload = {
            "epsilon": result.epsilon,
            "accountant": result.accountant,
            "requested_accountant": result.requested,
            "fallback_reason": result.fallback_reason,
            "rdp_cross_check": epsilon_cross_check([segment], delta=delta),
            "delta": delta,
            "sample_rate": segment[0],
            "noise_multiplier": segment[1],
            "steps": segment[2],
        }
        if as_json:
            echo_json(payload)
            return
        note = f" (fell back from {result.requested}: {result.fallback_reason})" if result.fallback_reason else ""
        typer.echo(
            f"epsilon = {result.epsilon:.6g} at delta = {delta:g} ({result.accountant}{note}); "
            f"{segment[2]} steps, q = {segment[0]:g}, sigma = {segment[1]:g}; "
            f"RDP cross-check {payload['rdp_cross_check']:.6g}"
        )

    _guard(run)


def noise(
    target_epsilon: Annotated[float, typer.Option("--target-epsilon", help="Epsilon budget.")],
    delta: Annotated[float, typer.Option("--delta", help="Target delta.")],
    sample_rate: Annotated[float, typer.Option("--sample-rate", help="Poisson rate q = expected batch / N.")],
    steps: Annotated[int, typer.Option("--steps", help="Planned optimizer updates.")],
    accountant: Annotated[str, typer.Option("--accountant", help=_ACCOUNTANT_HELP)] = "prv",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Smallest noise multiplier whose epsilon after STEPS updates stays within the target (never overshoots)."""
    from shared_core.accounting import calibrate_noise_multiplier, compute_epsilon_detailed
    from shared_core.cli._common import echo_json

    def run() -> None:
        sigma = calibrate_noise_multiplier(
            target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
        )
        result = compute_epsilon_detailed([(sample_rate, sigma, steps)], delta=delta, accountant=accountant)
        payload = {
            "noise_multiplier": sigma,
            "epsilon": result.epsilon,
            "target_epsilon": target_epsilon,
            "accountant": result.accountant,
            "delta": delta,
            "sample_rate": sample_rate,
            "steps": steps,
        }
        if as_json:
            echo_json(payload)
            return
        typer.echo(
            f"noise_multiplier = {sigma:.6g}: epsilon = {result.epsilon:.6g} <= {target_epsilon:g} at delta = "
            f"{delta:g} ({result.accountant}) after {steps} steps at q = {sample_rate:g}"
        )

    _guard(run)


def _load_certificate(path: Path, trusted: Any) -> tuple[dict[str, Any], str]:
    """The certificate at ``path`` (a JSON file) or inside a package (verified first); returns it and its kind."""
    from shared_core.certificate import load_certificate_json, parse_certificate_json
    from shared_core.errors import VerificationError

    if path.is_file() and path.suffix == ".json":
        return load_certificate_json(path), "certificate"
    try:
        from shared_core.tssp.verify import verify_and_read
    except ImportError:  # package verification not available: read the certificate from the folder
        if not path.is_dir():
            raise VerificationError(f"{path}: not a certificate JSON file or package folder", check="layout") from None
        return load_certificate_json(path / "dp_certificate.json"), "certificate in unverified folder"
    _, files = verify_and_read(path, trusted=trusted, decryption_key=None, keep={"dp-certificate"})
    if len(files) != 1:
        raise VerificationError(f"{path}: the package holds no DP certificate", check="certificate")
    (name, raw), *_ = files.items()
    return parse_certificate_json(raw, where=f"{path}/{name}"), "package"


def verify_privacy(
    path: Annotated[Path, typer.Argument(help="A dp_certificate.json file, or a package folder / archive.")],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="Signer's key folder (public keys) or trusted-keys JSON file.")
    ],
    max_epsilon: Annotated[
        float | None, typer.Option("--max-epsilon", help="Fail when the certified epsilon exceeds this.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Verify a DP certificate (signatures, schema, re-derived epsilon) and gate it on a maximum epsilon."""
    from shared_core.certificate import verify_certificate
    from shared_core.cli._common import echo_json
    from shared_core.tssp.keys import load_trusted_keys

    def run() -> None:
        trusted = load_trusted_keys(public_key)
        cert, kind = _load_certificate(path, trusted)
        check = verify_certificate(cert, trusted=trusted, max_epsilon=max_epsilon)
        if as_json:
            echo_json(
                {
                    "verified": True,
                    "source": kind,
                    "model_name": check.model_name,
                    "epsilon": check.epsilon,
                    "delta": check.delta,
                    "accountant": check.accountant,
                    "rederived_pld": check.rederived_pld,
                    "rederived_rdp": check.rederived_rdp,
                    "total_steps": check.total_steps,
                    "max_epsilon": max_epsilon,
                    "warnings": list(check.warnings),
                }
            )
            return
        budget = f", within max epsilon {max_epsilon:g}" if max_epsilon is not None else ""
        typer.echo(
            f"verified {kind} of {check.model_name}: ({check.epsilon:.4g}, {check.delta:.3g})-DP, {check.accountant}; "
            f"re-derived PLD {check.rederived_pld:.4g}, RDP {check.rederived_rdp:.4g}{budget}"
        )
        for warning in check.warnings:
            typer.echo(f"warning: {warning}", err=True)

    _guard(run)


def register(app: typer.Typer) -> None:
    """Add ``epsilon``, ``noise`` and ``verify-privacy`` to ``app``."""
    app.command("epsilon")(epsilon)
    app.command("noise")(noise)
    app.command("verify-privacy")(verify_privacy)
