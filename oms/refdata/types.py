"""What the Reference Data API returns, as OMS reads it.

Frozen because these values are shared by every caller through the cache.
Unknown fields are ignored (msgspec's default) so a newer API that adds fields
does not break OMS. ``channel`` is a plain string for the same reason: a new
channel must not make the whole template list undecodable.
"""

from __future__ import annotations

from typing import Annotated

import msgspec


class DocumentType(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    name: str
    active: bool
    description: str = ""


class ReturnAddress(msgspec.Struct, frozen=True, kw_only=True):
    lines: tuple[str, ...]
    postcode: str
    city: str
    country: str


class Brand(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    name: str
    active: bool
    sender_name: str
    sender_email: str
    return_address: ReturnAddress
    logo_ref: str = ""


class Template(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    document_type: str
    channel: str
    """``print``, ``email``, ``sms`` or ``archive`` today."""
    language: str
    brand: str
    version: int
    batch_config_res_id: Annotated[int, msgspec.Meta(gt=0)]
    """Thunderhead's Template Selector resource id (``batchConfigResId``): a number."""
    active: bool
