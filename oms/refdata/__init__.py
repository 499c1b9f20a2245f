"""Reference Data: the client OMS validates and enriches requests with, and its cache."""

from oms.refdata.client import RefDataClient
from oms.refdata.types import Brand, DocumentType, ReturnAddress, Template

__all__ = ["Brand", "DocumentType", "RefDataClient", "ReturnAddress", "Template"]
