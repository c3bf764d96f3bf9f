"""Who belongs to the federation, changed while it runs.

The orchestrator's kit names the participants provisioning made. An administrator adds a
participant enrolled since (its certificate, signed by the federation's CA on the CA's
machine from a request the participant made with its own key), adds a renewed certificate
to a member, revokes a certificate, or removes a member, through the orchestrator's API.
Each change is written to the database and the audit log and holds from the next request
on: no restart, and no new kit for anyone else.

A removed member, or one whose certificates are all revoked, is refused at its next
request; a silo's open tasks fail naming it at once. A removal sticks across restarts:
the kit's list only seeds members the database has never seen.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fedsilo._suggest import did_you_mean, listing
from fedsilo.audit import AuditLog
from fedsilo.config import ParticipantInfo, Role, SiloInfo, cert_fingerprint
from fedsilo.config._federation import PARTICIPANT_PATTERN
from fedsilo.errors import Conflict, InvalidRequest, NotFound
from fedsilo.orchestrator._access import Caller
from fedsilo.orchestrator._db import CertificateRow, MemberRow, Store

__all__ = ["Certificate", "Participant", "Roster"]

_ROLES = {
    Role.SILO.value: Role.SILO,
    Role.SUBMITTER.value: Role.SUBMITTER,
    Role.ADMIN.value: Role.ADMIN,
}
_NAME = re.compile(PARTICIPANT_PATTERN)


@dataclass(frozen=True)
class Certificate:
    """One certificate of a member: its fingerprint, expiry (once known) and revocation."""

    fingerprint: str
    not_after: float | None
    revoked_at: float | None
    revoked_by: str | None

    @property
    def valid(self) -> bool:
        expired = self.not_after is not None and self.not_after < time.time()
        return self.revoked_at is None and not expired


@dataclass(frozen=True)
class Participant:
    """A member of the federation as the orchestrator knows it now."""

    name: str
    role: Role
    admin: bool
    compute: str | None
    added_by: str
    removed_by: str | None
    certificates: tuple[Certificate, ...]

    @property
    def roles(self) -> frozenset[Role]:
        return frozenset({self.role, Role.ADMIN} if self.admin else {self.role})

    @property
    def active(self) -> bool:
        return self.removed_by is None

    @property
    def expires(self) -> float | None:
        """When its last valid certificate expires (None: unknown or none valid)."""
        ends = [c.not_after for c in self.certificates if c.valid and c.not_after is not None]
        return max(ends) if ends else None


@dataclass(frozen=True)
class _Issued:
    """What a certificate says: who, which role, its fingerprint and expiry."""

    name: str
    role: Role
    fingerprint: str
    not_after: float


def _unknown(members: dict[str, Participant]) -> set[str]:
    """The fingerprints of certificates whose expiry is not recorded."""
    return {c.fingerprint for p in members.values() for c in p.certificates if c.not_after is None}


def _bad(field: str, problem: str) -> InvalidRequest:
    """A refusal of the request's ``field``, named in the message and in ``fields``."""
    return InvalidRequest(f"{field}: {problem}", fields=[{"field": field, "problem": problem}])


class Roster:
    """The federation's members, from the database, with the kit's participants as seed.

    ``caller`` answers every request's "who is this?" from memory; every change goes to
    the database first, then to memory, under the event loop (one writer).
    """

    def __init__(
        self,
        *,
        federation: str,
        store: Store,
        audit: AuditLog,
        ca_file: Path,
        founding: Iterable[ParticipantInfo],
        silos: Iterable[SiloInfo],
    ) -> None:
        self.federation = federation
        self.store = store
        self.audit = audit
        self._ca = x509.load_pem_x509_certificate(Path(ca_file).read_bytes())
        self._seed(list(founding), {s.name: s.compute for s in silos})
        self._load()

    # -- reading ----------------------------------------------------------------------------

    def _seed(self, founding: list[ParticipantInfo], computes: dict[str, str]) -> None:
        """Record the kit's participants the database does not know yet."""
        members, certificates = self.store.members()
        known = {m.name for m in members}
        fingerprints = {c.fingerprint for c in certificates}
        now = time.time()
        for info in founding:
            if info.role not in _ROLES.values():
                continue
            cert = None
            if info.fingerprint not in fingerprints:
                cert = CertificateRow(fingerprint=info.fingerprint, member=info.name, added_at=now)
            if info.name not in known:
                row = MemberRow(
                    name=info.name,
                    role=info.role.value,
                    admin=info.admin,
                    compute=computes.get(info.name),
                    added_at=now,
                    added_by="provision",
                )
                self.store.put_member(row, cert)
            elif cert is not None and not any(
                m.name == info.name and m.removed_at is not None for m in members
            ):
                self.store.add_certificate(cert)  # the kit vouches for a new certificate

    def _load(self) -> None:
        members, certificates = self.store.members()
        held: dict[str, list[Certificate]] = {}
        for c in certificates:
            held.setdefault(c.member, []).append(
                Certificate(c.fingerprint, c.not_after, c.revoked_at, c.revoked_by)
            )
        self._members = {
            m.name: Participant(
                name=m.name,
                role=Role(m.role),
                admin=m.admin,
                compute=m.compute,
                added_by=m.added_by,
                removed_by=m.removed_by,
                certificates=tuple(held.get(m.name, ())),
            )
            for m in members
        }
        self._callers = {
            c.fingerprint: Caller(p.name, p.roles)
            for p in self._members.values()
            if p.active
            for c in p.certificates
            if c.revoked_at is None
        }
        # certificates let in whose expiry is not recorded yet (those provisioning made)
        self._expiry_unknown = _unknown(self._members) & self._callers.keys()

    def caller(self, fingerprint: str | None, der: bytes | None = None) -> Caller | None:
        """The member a certificate belongs to, if it may still connect.

        The first time a member connects with a certificate whose expiry is not recorded
        (one provisioning made), ``der`` gives it.
        """
        who = self._callers.get(fingerprint or "")
        if who is not None and der is not None and fingerprint in self._expiry_unknown:
            not_after = x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
            self.store.certificate_expiry(fingerprint, not_after)
            self._load()
        return who

    def members(self, *, removed: bool = False) -> list[Participant]:
        """The members, by name (``removed``: those removed too)."""
        return sorted(
            (p for p in self._members.values() if removed or p.active), key=lambda p: p.name
        )

    def silos(self) -> list[str]:
        """The silos that are members now."""
        return [p.name for p in self.members() if p.role is Role.SILO]

    def submitters(self) -> set[str]:
        return {p.name for p in self.members() if p.role is Role.SUBMITTER}

    def member(self, name: str) -> Participant:
        """The active member ``name``; :class:`NotFound` naming the members otherwise."""
        found = self._members.get(name)
        if found is None or not found.active:
            names = [p.name for p in self.members()]
            raise NotFound(
                f"no member '{name}' in federation '{self.federation}'"
                f"{did_you_mean(name, names)} (its members: {listing(names)})"
            )
        return found

    # -- changing ---------------------------------------------------------------------------

    def _issued(self, pem: str) -> _Issued:
        """Check a certificate the way a TLS handshake with this orchestrator would, and
        read who it names."""
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
        except ValueError as exc:
            raise _bad("certificate", f"not a PEM certificate ({exc})") from None
        try:
            cert.verify_directly_issued_by(self._ca)
        except (InvalidSignature, ValueError, TypeError):
            raise _bad(
                "certificate",
                f"not signed by the CA of federation '{self.federation}'; sign the "
                "participant's request with this federation's CA (fedsilo ca sign)",
            ) from None
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise _bad(
                "certificate",
                f"valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d}, not now; sign a new request",
            )

        def attribute(oid: x509.ObjectIdentifier) -> str:
            values = cert.subject.get_attributes_for_oid(oid)
            return str(values[0].value) if values else ""

        name, unit = attribute(NameOID.COMMON_NAME), attribute(NameOID.ORGANIZATIONAL_UNIT_NAME)
        if attribute(NameOID.ORGANIZATION_NAME) != self.federation:
            raise _bad(
                "certificate",
                f"issued for federation '{attribute(NameOID.ORGANIZATION_NAME)}', "
                f"not '{self.federation}'",
            )
        role = _ROLES.get(unit)
        if role is None:
            raise _bad(
                "certificate",
                f"its role '{unit}' ('{name}') cannot be a member added while the "
                f"federation runs (one of: {', '.join(_ROLES)})",
            )
        if not _NAME.fullmatch(name):
            raise _bad("certificate", f"'{name}' is not a participant name")
        der = cert.public_bytes(serialization.Encoding.DER)
        return _Issued(name, role, cert_fingerprint(der), cert.not_valid_after_utc.timestamp())

    def add(self, pem: str, *, compute: str | None, by: str) -> Participant:
        """Admit the participant ``pem`` names; :class:`Conflict` if the name is taken."""
        issued = self._issued(pem)
        taken = self._members.get(issued.name)
        if taken is not None and taken.active:
            raise Conflict(
                f"the name '{issued.name}' is taken: a {taken.role.value} of federation "
                f"'{self.federation}' is called so; enroll under another name, or give this "
                "certificate to that member as a renewal"
            )
        if any(
            c.fingerprint == issued.fingerprint
            for p in self._members.values()
            for c in p.certificates
        ):
            raise Conflict(f"certificate of '{issued.name}': already recorded; sign a new request")
        if issued.role is Role.SILO:
            if not compute:
                raise _bad(
                    "compute", f"silo '{issued.name}': give the name of its compute (--compute)"
                )
            used = {p.compute: p.name for p in self.members() if p.compute is not None}
            if compute in used:
                raise Conflict(f"compute '{compute}' is silo '{used[compute]}'s; name another")
        elif compute is not None:
            raise _bad("compute", f"'{issued.name}' is a {issued.role.value}: it has no compute")
        now = time.time()
        self.store.put_member(
            MemberRow(
                name=issued.name,
                role=issued.role.value,
                admin=False,
                compute=compute,
                added_at=now,
                added_by=by,
                removed_at=None,
                removed_by=None,
            ),
            CertificateRow(
                fingerprint=issued.fingerprint,
                member=issued.name,
                not_after=issued.not_after,
                added_at=now,
            ),
        )
        self._load()
        self.audit.append(
            "member.added",
            member=issued.name,
            role=issued.role.value,
            compute=compute,
            fingerprint=issued.fingerprint,
            by=by,
            again=taken is not None,
        )
        return self._members[issued.name]

    def renew(self, name: str, pem: str, *, by: str) -> Participant:
        """Add a new certificate to member ``name``; its older ones stay valid until they
        expire or are revoked, so it can switch without a pause."""
        member = self.member(name)
        issued = self._issued(pem)
        if (issued.name, issued.role) != (member.name, member.role):
            raise _bad(
                "certificate",
                f"issued to {issued.role.value} '{issued.name}', not to "
                f"{member.role.value} '{member.name}'",
            )
        if any(c.fingerprint == issued.fingerprint for c in member.certificates):
            raise Conflict(f"certificate of '{name}': already recorded; sign a new request")
        self.store.add_certificate(
            CertificateRow(
                fingerprint=issued.fingerprint,
                member=name,
                not_after=issued.not_after,
                added_at=time.time(),
            )
        )
        self._load()
        self.audit.append("member.renewed", member=name, fingerprint=issued.fingerprint, by=by)
        return self._members[name]

    def revoke(self, name: str, fingerprint: str | None, *, by: str) -> Participant:
        """Revoke one certificate of ``name`` (``fingerprint``, or a unique prefix of it), or
        all of them; the member stays, and connects again once renewed."""
        member = self.member(name)
        live = [c.fingerprint for c in member.certificates if c.revoked_at is None]
        chosen = live if fingerprint is None else [f for f in live if f.startswith(fingerprint)]
        if len(chosen) != (len(live) if fingerprint is None else 1) or not chosen:
            held = listing([c.fingerprint[:16] for c in member.certificates]) or "none"
            wanted = "any unrevoked certificate" if fingerprint is None else repr(fingerprint)
            raise NotFound(
                f"'{name}' holds no single unrevoked certificate matching {wanted}; "
                f"its certificates: {held}"
            )
        self.store.revoke(chosen, by=by)
        self._load()
        self.audit.append("certificate.revoked", member=name, fingerprints=chosen, by=by)
        return self._members[name]

    def remove(self, name: str, *, by: str) -> Participant:
        """Remove member ``name``: its certificates are refused from now on."""
        member = self.member(name)
        if member.role is Role.ADMIN and not [
            p for p in self.members() if Role.ADMIN in p.roles and p.name != name
        ]:
            raise Conflict(f"'{name}' is the federation's only administrator; add another first")
        self.store.remove_member(name, by=by)
        self._load()
        self.audit.append("member.removed", member=name, role=member.role.value, by=by)
        return self._members[name]

    def connected_as(self, name: str) -> bool:
        """Whether ``name`` may still connect (a member with an unrevoked certificate)."""
        return any(who.name == name for who in self._callers.values())
