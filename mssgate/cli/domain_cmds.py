"""`mssgate domain ...`: local domains and the trust list of peer operators."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from rich.progress import BarColumn, MofNCompleteColumn, Progress

from mssgate.cli.context import actor, emit_json, emit_table, say, state
from mssgate.directory.domains import UNCHANGED, parse_relay
from mssgate.directory.models import Cipher, Domain, DomainKind, EncryptionPolicy, InnerSignature
from mssgate.directory.signing import SignForUsers, set_sign_for_users
from mssgate.directory.signing import sign_for_users as sign_for_users_of
from mssgate.directory.trustlist import (
    DEFAULT_RELAY,
    TrustListRefused,
    apply_trust_list,
    check_relay_template,
    read_trust_list,
)
from mssgate.errors import NotFound, UsageFailed, ValidationFailed
from mssgate.pki import load_certificates

app = typer.Typer(help="Local domains and trusted peer domains.", no_args_is_help=True)

# "default" puts a domain back on the global policy.encryption (stored as NULL).
_DEFAULT = "default"
EncryptionOption = Annotated[
    str | None,
    typer.Option(
        "--encryption",
        metavar="required|opportunistic|off",
        help="S/MIME encryption policy of the domain (default: policy.encryption).",
    ),
]
CipherOption = Annotated[
    str | None,
    typer.Option(
        "--cipher",
        metavar="aes-gcm|aes-cbc",
        help="What the gateway encrypts with for this peer (default: aes-gcm).",
    ),
]
InnerSignatureOption = Annotated[
    str | None,
    typer.Option(
        "--signature-inside-encryption",
        metavar="accept|verify|refuse",
        help=(
            "Sign-then-encrypt for a person: delivered still encrypted, its signature unseen"
            " (accept, the default); opened, verified and encrypted again when the gateway"
            " holds the recipient's key (verify); or refused 550 5.7.5. Local domains only."
        ),
    ),
]


def _inner_signature(value: str) -> InnerSignature | None:
    if value.strip().lower() == _DEFAULT:
        return None
    try:
        return InnerSignature.from_cli(value)
    except ValueError as exc:
        raise UsageFailed(f"--signature-inside-encryption: {exc} or default") from None


def _inner_text(domain: Domain) -> str | None:
    if domain.kind is not DomainKind.LOCAL:
        return None
    if domain.signature_inside_encryption is None:
        return "accept (default)"
    return domain.signature_inside_encryption.value


def _encryption(value: str, *, allow_default: bool) -> EncryptionPolicy | None:
    if allow_default and value.strip().lower() == _DEFAULT:
        return None
    try:
        return EncryptionPolicy.from_cli(value)
    except ValueError as exc:
        more = " or default" if allow_default else ""
        raise UsageFailed(f"--encryption: {exc}{more}") from None


def _cipher(value: str) -> Cipher | None:
    if value.strip().lower() == _DEFAULT:
        return None
    try:
        return Cipher.from_cli(value)
    except ValueError as exc:
        raise UsageFailed(f"--cipher: {exc} or default") from None


def _operator_dn(value: str) -> str:
    """The DN as given, once it parses as RFC 4514: the MTA compares it, parsed, with the
    subject of the peer's certificate."""
    text = value.strip()
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError:
        name = None
    if name is None or len(name) == 0:
        raise UsageFailed(
            f"--operator-dn: {value!r} is not an RFC 4514 distinguished name"
            " (e.g. CN=mx.operateur.fr,O=Operateur,C=FR, no space after the commas)"
        )
    return text


def _policy_text(domain: Domain, default: str) -> str:
    own = domain.encryption.value if domain.encryption is not None else None
    text = own or f"{default} (default)"
    if domain.kind == "trusted" and domain.cipher is Cipher.AES_CBC:
        text += ", aes-cbc"
    return text


@app.command("add")
def add(ctx: typer.Context, domain: str, encryption: EncryptionOption = None) -> None:
    """Add a local domain (one whose mailboxes this gateway hosts).

    --encryption required: only S/MIME-encrypted mail is accepted for its mailboxes.
    """
    policy = _encryption(encryption, allow_default=False) if encryption is not None else None
    added = state(ctx).directory().domains.add_local(domain, encryption=policy)
    say(f"added local domain {added.name}")


@app.command("trust")
def trust(
    ctx: typer.Context,
    domain: str,
    relay: Annotated[
        str,
        typer.Option("--relay", help="HOST[:PORT] of the peer's MTA (port 25 when left out)."),
    ],
    ca: Annotated[
        Path | None,
        typer.Option("--ca", help="CA bundle of the peer operator (PEM: root and intermediates)."),
    ] = None,
    operator_dn: Annotated[
        str | None,
        typer.Option(
            "--operator-dn",
            help=(
                "Subject DN (RFC 4514) the peer gateway's certificate must have."
                " Left out on an update, the stored one stays."
            ),
        ),
    ] = None,
    clear_operator_dn: Annotated[
        bool,
        typer.Option(
            "--clear-operator-dn",
            help="Remove the stored operator DN (any certificate of the CA may then speak).",
        ),
    ] = False,
    encryption: EncryptionOption = None,
    cipher: CipherOption = None,
) -> None:
    """Put a peer operator's domain on the trust list (or update it).

    --encryption: what the gateway does with mail leaving for it (required: encrypted to
    each recipient or not sent; opportunistic: encrypted when a certificate is known; off:
    as written). Left out on an update, the current setting stays.

    --ca: the peer's gateway certificate must chain to a root of this bundle (its other
    certificates serve as intermediates). --operator-dn: its subject must also be this name
    (kept on an update without it; --clear-operator-dn removes it).
    """
    policy = _encryption(encryption, allow_default=True) if encryption is not None else UNCHANGED
    chosen = _cipher(cipher) if cipher is not None else UNCHANGED
    try:
        parse_relay(relay)
    except ValidationFailed as exc:
        raise UsageFailed(f"--relay: {exc}") from None
    if operator_dn is not None and clear_operator_dn:
        raise UsageFailed("give --operator-dn or --clear-operator-dn, not both")
    dn = (
        _operator_dn(operator_dn)
        if operator_dn is not None
        else None
        if clear_operator_dn
        else UNCHANGED
    )
    ca_certs = load_certificates(ca) if ca is not None else None
    result = (
        state(ctx)
        .directory()
        .domains.trust(
            domain,
            relay=relay,
            ca=ca_certs,
            operator_dn=dn,
            encryption=policy,
            cipher=chosen,
        )
    )
    say(f"trusted {result.name} via {result.relay_host}:{result.relay_port}")
    if dn is UNCHANGED and result.operator_dn:
        # Said, since the DN used to be dropped by such a re-run: an operator relying on
        # that to clear it learns it stayed.
        say(f"operator DN kept: {result.operator_dn} (--clear-operator-dn removes it)")


@app.command("set")
def set_(
    ctx: typer.Context,
    domain: str,
    encryption: EncryptionOption = None,
    cipher: CipherOption = None,
    signature_inside_encryption: InnerSignatureOption = None,
    sign_for_users: Annotated[
        str | None,
        typer.Option(
            "--sign-for-users",
            metavar="off|missing|always",
            help=(
                "Local domains: sign what a user submits unsigned with the key the gateway"
                " holds for them (missing, the default; always: also a message signed in"
                " one part only) or refuse it (off)."
            ),
        ),
    ] = None,
) -> None:
    """Change a domain's encryption policy or cipher ("default": back to the global one).

    --signature-inside-encryption (local domains): what happens to a message signed and
    then encrypted (the Encrypt button of Thunderbird, Outlook, NeoMutt) for a person.
    accept: delivered as sent, still encrypted, when a local user sent it and it is
    encrypted to the registered certificates of its recipients (or the sender) only; the
    reader's client checks the signature. verify: the same, except that when the gateway
    holds every recipient's key (cert issue, cert import) it opens the message, verifies the
    signature like any other and encrypts it again to the recipient. refuse: 550 5.7.5.
    """
    changes = (encryption, cipher, signature_inside_encryption)
    if all(c is None for c in changes) and sign_for_users is None:
        raise UsageFailed(
            "nothing to change: give --encryption, --cipher, --signature-inside-encryption"
            " or --sign-for-users"
        )
    mode = None
    if sign_for_users is not None:
        try:
            mode = SignForUsers.from_cli(sign_for_users)
        except ValueError as exc:
            raise UsageFailed(f"--sign-for-users: {exc}") from None
    policy = _encryption(encryption, allow_default=True) if encryption is not None else UNCHANGED
    chosen = _cipher(cipher) if cipher is not None else UNCHANGED
    inner = (
        _inner_signature(signature_inside_encryption)
        if signature_inside_encryption is not None
        else UNCHANGED
    )
    st = state(ctx)
    if mode is not None:
        set_sign_for_users(st.engine(), actor(), domain, mode)
    if any(c is not None for c in changes):
        result = st.directory().domains.set_encryption(
            domain, encryption=policy, cipher=chosen, signature_inside_encryption=inner
        )
    else:
        result = st.directory().domains.get(domain)
    text = f"{result.name}: encryption {_policy_text(result, st.config().policy.encryption)}"
    if result.kind is DomainKind.LOCAL:
        text += f", signature inside encryption {_inner_text(result)}"
        text += f", sign for users {sign_for_users_of(st.engine(), result.name).value}"
    say(text)


@app.command("untrust")
def untrust(ctx: typer.Context, domain: str) -> None:
    """Remove a peer domain from the trust list."""
    state(ctx).directory().domains.untrust(domain)
    say(f"untrusted {domain.lower()}")


@app.command("list")
def list_(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List local and trusted domains.

    With --json, "encryption" is null for a domain on the global policy.encryption, and
    "sign_for_users" null for a peer domain (the setting is a local domain's).
    """
    st = state(ctx)
    rows = st.directory().domains.list()
    if json_out:
        emit_json(rows)
        return
    default = st.config().policy.encryption
    emit_table(
        "Domains",
        [
            "domain",
            "kind",
            "relay",
            "CA",
            "operator DN",
            "encryption",
            "signature inside encryption",
            "sign for users",
        ],
        [
            (
                d.name,
                d.kind.value,
                f"{d.relay_host}:{d.relay_port}" if d.relay_host else None,
                d.ca_subject,
                d.operator_dn,  # the one subject a peer's gateway may present, if pinned
                _policy_text(d, default),
                _inner_text(d),
                d.sign_for_users.value if d.sign_for_users is not None else None,
            )
            for d in rows
        ],
    )


@app.command("import-trust-list")
def import_trust_list(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The national list (listeblanchemssante.xml).")],
    allow_unsigned: Annotated[
        bool,
        typer.Option("--allow-unsigned", help="Accept a list that carries no signature."),
    ] = False,
    ca: Annotated[
        Path | None,
        typer.Option("--ca", help="CA bundle (PEM) for the signature (default: tls.ca)."),
    ] = None,
    signer_cn: Annotated[
        str | None,
        typer.Option("--signer-cn", help="Require this common name on the signing certificate."),
    ] = None,
    relay: Annotated[
        str,
        typer.Option(
            "--relay",
            help="Relay of a newly trusted domain ({domain} is replaced); the list has none.",
        ),
    ] = DEFAULT_RELAY,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Make the trust list equal to the MSSanté national list (signed XML "liste blanche").

    Domains of the list become trusted, trusted domains absent from it are removed; each
    change is audited. A list whose signature does not verify is refused; an unsigned one
    too, unless --allow-unsigned. Idempotent: a second run changes nothing.
    """
    st = state(ctx)
    template = check_relay_template(relay)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no such file: {file}") from None
    except OSError as exc:
        raise TrustListRefused(f"cannot read {file}: {exc.strerror}") from None
    ca_file = ca if ca is not None else st.config().tls.ca
    trust_list = read_trust_list(
        data, ca_file=ca_file, allow_unsigned=allow_unsigned, signer_cn=signer_cn
    )
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        disable=json_out or not sys.stderr.isatty(),
        transient=True,
    )
    with progress:
        task = progress.add_task("applying", total=None)
        report = apply_trust_list(
            st.engine(),
            trust_list,
            actor=actor(),
            relay_template=template,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if json_out:
        emit_json(report)
        return
    origin = f"signed by {report.signer}" if report.signed else "UNSIGNED"
    say(
        f"trust list ({origin}): {len(report.added)} added, {len(report.removed)} removed,"
        f" {len(report.updated)} updated, {len(report.unchanged)} unchanged,"
        f" {len(report.skipped)} skipped"
    )
    for name in report.added:
        say(f"  + {name}")
    for name in report.removed:
        say(f"  - {name}")
    for name in report.updated:
        say(f"  ~ {name}")
    for skipped in report.skipped:
        say(f"  ! {skipped.name}: {skipped.reason}")
