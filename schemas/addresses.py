"""E-mail addresses, parsed strictly: one address, ASCII, a host-name or literal domain.

Pure text work shared by the staff directory (:mod:`schemas.staff`), the settings
(``GOVNOTIFY_SMTP_FROM``) and the e-mail notifier (:mod:`notifiers.staff.email`).
"""

from __future__ import annotations

import re
from email import errors as email_errors
from email.headerregistry import Address, HeaderRegistry

__all__ = ["parse_address"]

_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_HEADERS = HeaderRegistry()


def parse_address(value: object, *, display_name: bool = True) -> Address:
    """One e-mail address, strictly: ``a@b.cn`` or (``display_name``) ``长安政务 <a@b.cn>``.

    The address itself must be ASCII (no SMTPUTF8 needed; a display name may be Chinese), with a
    domain of host-name labels or a ``[literal]``. Lists, groups, line breaks and anything the
    stdlib parser reports as a defect are refused.

    Raises:
      ValueError: saying what is wrong, without echoing the value.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError("is empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("contains a line break or control character")
    try:
        header = _HEADERS("To", value)
        groups, defects = header.groups, header.defects
    except (IndexError, ValueError, email_errors.MessageError):
        raise ValueError("is not an e-mail address") from None
    addresses = [a for g in groups for a in g.addresses]
    if len(addresses) != 1:
        raise ValueError(f"must hold exactly one address, found {len(addresses)}")
    address = addresses[0]
    if not address.addr_spec.isascii():
        raise ValueError("must be an ASCII address (internationalised addresses are not supported)")
    if defects or groups[0].display_name is not None:
        raise ValueError("is not an e-mail address")
    if not address.username or not address.domain:
        raise ValueError("is not an e-mail address (local-part@domain)")
    if not (address.domain.startswith("[") or _valid_domain(address.domain)):
        raise ValueError("has an invalid domain")
    if len(address.addr_spec) > 254:
        raise ValueError("is longer than 254 characters")
    if address.display_name and not display_name:
        raise ValueError("must be a bare address, without a display name")
    return address


def _valid_domain(domain: str) -> bool:
    labels = domain.rstrip(".").split(".")
    return len(domain) <= 253 and all(_DOMAIN_LABEL.fullmatch(label) for label in labels)
