"""Member profiles: the standard fields and a merchant's custom attributes, validated (pure).

Both the REST API (JSON values) and CSV import (text cells) go through :func:`clean_field`
and :func:`clean_attribute`, so a value is accepted or refused the same way whichever door it
came in by. Every refusal is an :class:`~crm_lite.errors.InvalidInput` naming the field, or
``attributes.<name>`` for a custom attribute.
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any, Literal

import msgspec

from gateway.text import InvalidNumber, normalize_msisdn

from .errors import InvalidInput

MAX_ATTRIBUTES = 30
"""Custom attribute definitions a merchant may have."""
MAX_TEXT_ATTRIBUTE = 200
MAX_CHOICES = 50
MAX_NUMBER = 1e15
STANDARD_FIELDS = ("phone", "name", "gender", "birthday", "email", "note")
"""Profile fields every member has, besides the custom attributes."""
READ_ONLY_FIELDS = ("member_no", "joined_at", "source", "points")
"""Columns of an export that an import accepts and ignores (so an export imports back)."""
FIELD_LIMITS = {"name": 64, "email": 254, "note": 500}
ATTRIBUTE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_GENDERS = {"": "", "male": "male", "m": "male", "男": "male", "female": "female", "f": "female", "女": "female"}

AttributeType = Literal["text", "number", "date", "choice"]


class AttributeDef(msgspec.Struct, frozen=True, kw_only=True):
    """A merchant's custom attribute: its key in ``attributes``, a label for people, a type."""

    name: str
    label: str = ""
    type: AttributeType
    choices: tuple[str, ...] = ()


UNSET = msgspec.UNSET


class Profile(msgspec.Struct, kw_only=True):
    """Validated profile values; a field left ``UNSET`` is not being changed, and an attribute
    mapped to ``None`` is being removed."""

    phone: str | msgspec.UnsetType = UNSET
    name: str | msgspec.UnsetType = UNSET
    gender: str | msgspec.UnsetType = UNSET
    birthday: date | None | msgspec.UnsetType = UNSET
    email: str | msgspec.UnsetType = UNSET
    note: str | msgspec.UnsetType = UNSET
    attributes: dict[str, Any] = {}


def validate_definition(defn: AttributeDef) -> AttributeDef:
    """Raise :class:`InvalidInput` unless ``defn`` is a usable attribute definition."""
    if not ATTRIBUTE_NAME_RE.fullmatch(defn.name):
        raise InvalidInput("name", "an attribute name is 1 to 32 lower-case letters, digits or _,"
                                   f" starting with a letter; got {defn.name!r}")
    if defn.name in STANDARD_FIELDS or defn.name in READ_ONLY_FIELDS or defn.name in ("id", "attributes", "groups"):
        raise InvalidInput("name", f"{defn.name!r} is a standard member field")
    if len(defn.label) > 64:
        raise InvalidInput("label", "a label is at most 64 characters")
    if defn.type == "choice":
        choices = tuple(c.strip() for c in defn.choices)
        if not choices or len(choices) > MAX_CHOICES or any(not c or len(c) > 64 for c in choices):
            raise InvalidInput("choices", f"a choice attribute needs 1 to {MAX_CHOICES} non-empty choices"
                                          " of at most 64 characters")
        if len(set(choices)) != len(choices):
            raise InvalidInput("choices", "choices must differ from each other")
        return msgspec.structs.replace(defn, choices=choices)
    if defn.choices:
        raise InvalidInput("choices", "only a choice attribute has choices")
    return defn


def clean_field(field: str, value: Any) -> Any:
    """A standard field's stored value; ``None`` or ``""`` clears it (phone excepted)."""
    if field == "phone":
        if not isinstance(value, str):
            raise InvalidInput("phone", "phone must be a string")
        try:
            return normalize_msisdn(value)
        except InvalidNumber:
            raise InvalidInput("phone", f"phone {value!r} is not a Chinese mobile number") from None
    if value is None:
        return None if field == "birthday" else ""
    if not isinstance(value, str):
        raise InvalidInput(field, f"{field} must be a string")
    value = value.strip()
    if field == "birthday":
        if not value:
            return None
        return _date(field, value)
    if field == "gender":
        gender = _GENDERS.get(value.lower())
        if gender is None:
            raise InvalidInput("gender", f"gender is male, female or empty; got {value!r}")
        return gender
    limit = FIELD_LIMITS[field]
    if len(value) > limit:
        raise InvalidInput(field, f"{field} is at most {limit} characters")
    if field == "email" and value and not _EMAIL_RE.fullmatch(value):
        raise InvalidInput("email", f"email {value!r} is not an e-mail address")
    return value


def _date(field: str, value: str) -> date:
    try:
        return date.fromisoformat(value.replace("/", "-"))
    except ValueError:
        raise InvalidInput(field, f"{field} must be a date written YYYY-MM-DD; got {value!r}") from None


def clean_attribute(defn: AttributeDef, value: Any) -> Any:
    """The JSON value stored for a custom attribute, or ``None`` (remove it) for ``None``/``""``."""
    field = f"attributes.{defn.name}"
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if defn.type == "number":
        if isinstance(value, bool):
            raise InvalidInput(field, f"attribute {defn.name} must be a number")
        if isinstance(value, str):
            try:
                value = float(value.strip()) if any(c in value for c in ".eE") else int(value.strip())
            except ValueError:
                raise InvalidInput(field, f"attribute {defn.name} must be a number; got {value!r}") from None
        if not isinstance(value, (int, float)) or not math.isfinite(value) or abs(value) >= MAX_NUMBER:
            raise InvalidInput(field, f"attribute {defn.name} must be a finite number below {MAX_NUMBER:.0e}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value
    if not isinstance(value, str):
        raise InvalidInput(field, f"attribute {defn.name} must be a string")
    value = value.strip()
    if defn.type == "date":
        return _date(field, value).isoformat()
    if defn.type == "choice":
        if value not in defn.choices:
            raise InvalidInput(field, f"attribute {defn.name} must be one of {', '.join(defn.choices)}; got {value!r}")
        return value
    if len(value) > MAX_TEXT_ATTRIBUTE:
        raise InvalidInput(field, f"attribute {defn.name} is at most {MAX_TEXT_ATTRIBUTE} characters")
    return value


def clean_profile(values: dict[str, Any], attributes: dict[str, Any], definitions: dict[str, AttributeDef]) -> Profile:
    """A :class:`Profile` from raw standard ``values`` (only those present are set) and raw
    custom ``attributes``; an attribute the merchant has not defined is refused."""
    profile = Profile()
    for field, value in values.items():
        setattr(profile, field, clean_field(field, value))
    cleaned = {}
    for name, value in attributes.items():
        defn = definitions.get(name)
        if defn is None:
            raise InvalidInput(f"attributes.{name}", f"no attribute named {name!r} is defined for this merchant")
        cleaned[name] = clean_attribute(defn, value)
    profile.attributes = cleaned
    return profile


def member_no_text(number: int) -> str:
    """``M000123``: the member number as shown to people (at least six digits)."""
    return f"M{number:06d}"


def parse_member_no(text: str) -> int | None:
    m = re.fullmatch(r"[Mm]0*([0-9]{1,18})", text.strip())
    return int(m[1]) if m and int(m[1]) > 0 else None
