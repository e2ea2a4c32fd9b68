"""Secret redaction for anything a tracker or a package receives, and a secret scan over files before upload.

Two tools with one vocabulary of what a secret looks like:

* :func:`redact_config_secrets` returns a deep copy of a config (dicts, lists, tuples, dataclasses, strings)
  in which values under secret-named keys (``hub_token``, ``WANDB_API_KEY``, ``password``, ``client_secret``,
  ``credentials`` ...), credentials embedded in URLs and strings shaped like known token formats are replaced.
  Names such as ``max_tokens``, ``num_memory_tokens``, ``tokenizer_name``, ``pad_token_id`` or ``bos_token`` are
  *not* secrets and are left alone.
* :func:`find_secrets` and :func:`scan_paths` look for the same shapes (plus caller-given canary strings) in raw
  bytes, so a folder can be refused before it leaves the machine. Findings name the kind of secret and its byte
  offset, never the secret itself, so they are safe to log.

Nothing here imports torch or a training framework.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "REDACTED",
    "find_secrets",
    "has_url_credentials",
    "is_secret_key",
    "redact_config_secrets",
    "redact_text",
    "scan_paths",
    "secret_values",
    "secret_values_from_env",
]

REDACTED = "***REDACTED***"
"""What a redacted value is replaced with."""

_URL_USERINFO_MASK = "***"

# Words that make a key secret wherever they appear in it.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "secrets",
        "credential",
        "credentials",
        "apikey",
        "authorization",
        "cookie",
        "privatekey",
    }
)
# ``<word>_key`` is secret for these words (``api_key``, ``secret_key``, ``private_key`` ...).
_KEY_QUALIFIERS = frozenset(
    {
        "access",
        "account",
        "api",
        "auth",
        "client",
        "encryption",
        "hmac",
        "license",
        "master",
        "private",
        "secret",
        "session",
        "signing",
        "subscription",
    }
)
# ``<word>_token`` names that are tokenizer vocabulary, not credentials (``bos_token``, ``pad_token`` ...).
_VOCAB_TOKEN_WORDS = frozenset(
    {
        "additional",
        "audio",
        "bos",
        "boi",
        "cls",
        "end",
        "eoi",
        "eos",
        "image",
        "mask",
        "pad",
        "sep",
        "special",
        "start",
        "unk",
        "video",
    }
)
# ``<word>_tokens`` (plural) is secret only for these (``access_tokens``); ``max_tokens`` is a count.
_PLURAL_TOKEN_QUALIFIERS = frozenset({"access", "api", "auth", "bearer", "hf", "hub", "refresh", "session"})
# ``<word>_pass`` / ``<word>_pwd`` is a password for these words.
_PASS_QUALIFIERS = frozenset(
    {"admin", "database", "db", "ftp", "ldap", "login", "mail", "mysql", "pg", "postgres", "redis", "root", "smtp",
     "sql", "ssh", "user"}
)  # fmt: skip
# Keys under which a bare 40-hex string is taken for a W&B API key (elsewhere it is usually a git commit).
_HEX_KEY_WORDS = frozenset({"key", "apikey", "wandb", "auth", "login", "api"})

_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")

# Known token formats: (kind, pattern). Each pattern matches the token itself.
_TOKEN_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("huggingface token", re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")),
    ("openai-style key", re.compile(r"(?<![A-Za-z0-9-])sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_\-]{20,}")),
    ("github token", re.compile(r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})")),
    ("gitlab token", re.compile(r"(?<![A-Za-z0-9])glpat-[A-Za-z0-9_\-]{20,}")),
    ("slack token", re.compile(r"(?<![A-Za-z0-9])xox[abprs]-[A-Za-z0-9\-]{10,}")),
    ("aws access key id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])")),
    ("wandb v1 key", re.compile(r"(?<![A-Za-z0-9])wandb_v1_[A-Za-z0-9_]{20,}")),
    (
        "private key",
        re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----)?"),
    ),
    ("json web token", re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
)
# scheme://user[:password]@host -> the user-info part.
# ``user:password@``, ``user@`` and ``:password@`` (Redis URLs have no user name).
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>(?:[^\s/@:\"'<>]+(?::[^\s/@\"'<>]*)?|:[^\s/@\"'<>]+))@"
)
_BEARER = re.compile(r"(?i)\b(?P<scheme>bearer|basic)\s+(?P<cred>(?=[^\s]*[0-9])[A-Za-z0-9_\-.=:+/]{16,})")
# NAME=value (env style) and --flag value / --flag=value (CLI style) for secret-named keys.
_ASSIGNMENT = re.compile(r"(?P<prefix>\b(?P<name>[A-Za-z][A-Za-z0-9_.\-]*)=)(?P<value>[^\s\"',;&}]+)")
_CLI_FLAG = re.compile(r"(?P<prefix>--(?P<name>[A-Za-z][A-Za-z0-9_\-]*)(?:=|\s+))(?P<value>[^\s\"',;&}-][^\s\"',;&}]*)")
# ``NAME='value'`` / ``NAME="value"`` (shell lines) and ``name: value`` (YAML, logs).
_QUOTED_ASSIGNMENT = re.compile(
    r"(?P<prefix>\b(?P<name>[A-Za-z][A-Za-z0-9_.\-]*)=(?P<quote>['\"]))(?P<value>[^'\"\s]{1,})(?P=quote)"
)
_COLON_PAIR = re.compile(r"(?P<prefix>\b(?P<name>[A-Za-z][A-Za-z0-9_.\-]*):[ \t]+)(?P<value>[^\s\"',;{}\[\]]+)")
_JSON_PAIR = re.compile(r"(?P<prefix>\"(?P<name>[A-Za-z][A-Za-z0-9_.\-]*)\"\s*:\s*\")(?P<value>[^\"\\]{4,})\"")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_NAMED_VALUE_PATTERNS = (_JSON_PAIR, _ASSIGNMENT, _QUOTED_ASSIGNMENT, _CLI_FLAG, _COLON_PAIR)
_PLACEHOLDERS = frozenset({"", REDACTED.lower(), "none", "null", "true", "false", "<hub_token>", "***", "<redacted>"})


def _key_words(key: str) -> list[str]:
    # ``passwd2`` is still a password: trailing digits are dropped from each word.
    return [w.lower().rstrip("0123456789") or w.lower() for w in _WORD_SPLIT.split(key) if w]


def is_secret_key(key: str) -> bool:
    """Whether a config key or env var name holds a credential.

    Args:
        key: A field, key or variable name in any case style (``hub_token``, ``apiKey``, ``WANDB_API_KEY``).

    Returns:
        True for names of API keys, tokens, passwords, secrets and credentials; False for look-alikes such as
        ``max_tokens``, ``num_memory_tokens``, ``tokenizer_name``, ``pad_token_id`` or ``bos_token``.
    """
    words = _key_words(key)
    if not words:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    last = words[-1]
    prev = words[-2] if len(words) > 1 else ""
    if last == "token":
        return prev not in _VOCAB_TOKEN_WORDS
    if last == "tokens":
        return prev in _PLURAL_TOKEN_QUALIFIERS
    if last == "key":
        return prev in _KEY_QUALIFIERS or prev in {"wandb", "mlflow", "hf", "openai", "anthropic", "comet", "neptune"}
    if last in {"auth", "pat"}:
        return True
    if last in {"pass", "pwd"}:  # db_pass, smtp_pwd; a bare PWD is the working directory, first_pass a count
        return prev in _PASS_QUALIFIERS
    return prev == "api" and last in {"key", "keys"}


def _is_placeholder(value: str) -> bool:
    stripped = value.strip()
    return stripped.lower() in _PLACEHOLDERS or (stripped.startswith("<") and stripped.endswith(">"))


def redact_text(text: str) -> str:
    """Redact secrets found inside free text (URL credentials, known token formats, ``NAME=secret`` pairs).

    Args:
        text: Any string, e.g. a tracking URI, a command line or a log line.

    Returns:
        The text with each secret replaced; URL credentials become ``scheme://***@host``.
    """
    out = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{_URL_USERINFO_MASK}@", text)
    for _kind, pattern in _TOKEN_PATTERNS:
        out = pattern.sub(REDACTED, out)
    out = _BEARER.sub(lambda m: f"{m['scheme']} {REDACTED}", out)

    def _assign(m: re.Match[str]) -> str:
        return f"{m['prefix']}{REDACTED}" if _names_a_secret(m) else m.group(0)

    for pattern in (_ASSIGNMENT, _CLI_FLAG, _COLON_PAIR):
        out = pattern.sub(_assign, out)
    out = _QUOTED_ASSIGNMENT.sub(
        lambda m: f"{m['prefix']}{REDACTED}{m['quote']}" if _names_a_secret(m) else m.group(0), out
    )
    return _JSON_PAIR.sub(lambda m: f'{m["prefix"]}{REDACTED}"' if _names_a_secret(m) else m.group(0), out)


def _names_a_secret(match: re.Match[str]) -> bool:
    return is_secret_key(match["name"]) and not _is_placeholder(match["value"])


def has_url_credentials(text: str) -> bool:
    """Whether ``text`` holds a URL with credentials (``scheme://user:pass@host``)."""
    return any(m["userinfo"] != _URL_USERINFO_MASK for m in _URL_CREDENTIALS.finditer(text))


def _redact_value_under_secret_key(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and _is_placeholder(value):
        return value
    return REDACTED


def _redact(obj: Any, key: str | None, seen: dict[int, Any]) -> Any:
    if key is not None and is_secret_key(key):
        return _redact_value_under_secret_key(obj)
    if isinstance(obj, str):
        if key is not None and _HEX40.match(obj) and set(_key_words(key)) & _HEX_KEY_WORDS:
            return REDACTED
        return redact_text(obj)
    if isinstance(obj, bytes):
        return redact_text(obj.decode("utf-8", "replace")).encode("utf-8") if find_secrets(obj) else obj
    if isinstance(obj, os.PathLike):
        return type(obj)(redact_text(os.fspath(obj)))  # type: ignore[call-arg]
    if id(obj) in seen:
        return seen[id(obj)]
    if isinstance(obj, Mapping):
        result: dict[Any, Any] = {}
        seen[id(obj)] = result
        for k, v in obj.items():
            result[k] = _redact(v, str(k), seen)
        if type(obj) is not dict:
            try:
                return type(obj)(result)  # type: ignore[call-arg]
            except TypeError:
                return result
        return result
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_redact(v, key, seen) for v in obj]
        if isinstance(obj, list):
            return items
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*items)
        return type(obj)(items)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _redact(getattr(obj, f.name), f.name, seen) for f in dataclasses.fields(obj)}
    return copy.deepcopy(obj)


def redact_config_secrets(obj: Any) -> Any:
    """Return a deep copy of ``obj`` with every secret replaced by ``"***REDACTED***"``.

    Secrets are values under secret-named keys (see :func:`is_secret_key`), credentials in URLs
    (``https://user:pass@host`` becomes ``https://***@host``), strings shaped like known tokens (``hf_...``,
    ``sk-...``, ``ghp_...``, AWS key ids, JWTs) and 40-hex strings under key-like names (W&B API keys). ``None``,
    booleans and placeholders such as ``<HUB_TOKEN>`` under a secret key are kept, since they hide nothing.

    Args:
        obj: A config: nested dicts, lists, tuples, sets, dataclass instances (returned as dicts), strings and
            scalars. Other objects are deep-copied unchanged.

    Returns:
        The redacted copy; ``obj`` itself is never modified.
    """
    return _redact(obj, None, {})


def _collect(obj: Any, key: str | None, out: set[str], depth: int = 0) -> None:
    if depth > 64:
        return
    if key is not None and is_secret_key(key):
        if isinstance(obj, (str, bytes)):
            text = obj.decode("utf-8", "replace") if isinstance(obj, bytes) else obj
            if not _is_placeholder(text):
                out.add(text)
            return
        if isinstance(obj, (int, float)) and not isinstance(obj, bool):
            return
    if isinstance(obj, str):
        for m in _URL_CREDENTIALS.finditer(obj):
            userinfo = m["userinfo"]
            if userinfo != _URL_USERINFO_MASK:
                out.add(userinfo)
                _, _, password = userinfo.partition(":")
                if len(password) >= 4:
                    out.add(password)
        for _kind, pattern in _TOKEN_PATTERNS:
            out.update(m.group(0) for m in pattern.finditer(obj))
        for pattern in _NAMED_VALUE_PATTERNS:
            out.update(m["value"] for m in pattern.finditer(obj) if _names_a_secret(m))
        if key is not None and _HEX40.match(obj) and set(_key_words(key)) & _HEX_KEY_WORDS:
            out.add(obj)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _collect(v, str(k), out, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _collect(v, key, out, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _collect(getattr(obj, f.name), f.name, out, depth + 1)


def secret_values(obj: Any) -> list[str]:
    """The raw secret strings that :func:`redact_config_secrets` would remove from ``obj``.

    Use them as canaries for :func:`find_secrets` / :func:`scan_paths` before uploading files derived from ``obj``.
    Never log the result.
    """
    found: set[str] = set()
    _collect(obj, None, found)
    return sorted(v for v in found if len(v) >= 4)


def secret_values_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of secret-named environment variables (``HF_TOKEN``, ``WANDB_API_KEY`` ...), as scan canaries."""
    env = os.environ if environ is None else environ
    return secret_values({name: value for name, value in env.items() if is_secret_key(name)})


def _iter_findings(text: str, canaries: list[str]) -> Iterator[tuple[int, str]]:
    for index, canary in enumerate(canaries):
        start = text.find(canary)
        while start != -1:
            yield start, f"canary #{index}"
            start = text.find(canary, start + 1)
    for kind, pattern in _TOKEN_PATTERNS:
        for m in pattern.finditer(text):
            yield m.start(), kind
    for m in _URL_CREDENTIALS.finditer(text):
        if not _is_placeholder(m["userinfo"]) and m["userinfo"] != _URL_USERINFO_MASK:
            yield m.start("userinfo"), "credentials in a URL"
    for m in _BEARER.finditer(text):
        if m["cred"] != REDACTED:
            yield m.start("cred"), f"{m['scheme'].lower()} credential"
    for pattern in _NAMED_VALUE_PATTERNS:
        for m in pattern.finditer(text):
            if _names_a_secret(m):
                yield m.start("value"), f"value of secret key {m['name']!r}"


def find_secrets(data: bytes | str, *, canaries: Iterable[str] = ()) -> list[str]:
    """Scan raw file content for secrets before it is uploaded.

    Args:
        data: File bytes (scanned byte for byte, so offsets are byte offsets) or text.
        canaries: Exact strings that must not occur (e.g. the values of ``HF_TOKEN`` or ``WANDB_API_KEY`` in this
            process); empty strings are ignored.

    Returns:
        One finding per hit, sorted by offset, such as ``"huggingface token at offset 120"``. A finding never
        contains the secret itself, so it can be logged.
    """
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    wanted = [c for c in canaries if c]
    if isinstance(data, bytes):
        wanted = [c.encode("utf-8").decode("latin-1") for c in wanted]
    hits = sorted(set(_iter_findings(text, wanted)))
    return [f"{kind} at offset {offset}" for offset, kind in hits]


_CHUNK = 8 * 1024 * 1024
_OVERLAP = 4096
_NEVER_UPLOAD = {"training_args.bin": "pickled TrainingArguments (holds the raw hub_token); never upload it"}


def _scan_file(path: Path, canaries: list[str]) -> list[str]:
    findings: set[tuple[int, str]] = set()
    wanted = [c.encode("utf-8").decode("latin-1") for c in canaries if c]
    with path.open("rb") as handle:
        base = 0
        tail = b""
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            window = tail + chunk
            offset0 = base - len(tail)
            for offset, kind in _iter_findings(window.decode("latin-1"), wanted):
                findings.add((offset0 + offset, kind))
            tail = window[-_OVERLAP:]
            base += len(chunk)
    return [f"{kind} at offset {offset}" for offset, kind in sorted(findings)]


def scan_paths(paths: Iterable[str | os.PathLike[str]], *, canaries: Iterable[str] = ()) -> list[tuple[Path, str]]:
    """Scan files and folders (recursively) for secrets; see :func:`find_secrets`.

    Symbolic links are reported, not followed. A file named ``training_args.bin`` is always a finding: it is a
    pickle of the Trainer arguments that holds the raw ``hub_token``.

    Args:
        paths: Files or folders to scan.
        canaries: Exact strings that must not occur anywhere.

    Returns:
        ``(file, finding)`` pairs; empty when nothing was found.
    """
    wanted = list(canaries)
    results: list[tuple[Path, str]] = []
    for root in paths:
        root_path = Path(root)
        files = [root_path] if not root_path.is_dir() or root_path.is_symlink() else sorted(root_path.rglob("*"))
        for file in files:
            if file.is_symlink():
                results.append((file, "symbolic link (not followed)"))
                continue
            if not file.is_file():
                continue
            if file.name in _NEVER_UPLOAD:
                results.append((file, _NEVER_UPLOAD[file.name]))
            results.extend((file, finding) for finding in _scan_file(file, wanted))
    return results
