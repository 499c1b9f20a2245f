from __future__ import annotations

import aiohttp

from tests.conftest import SOURCE_KEY, RunningOms


async def test_submit_and_read(oms: RunningOms) -> None:
    body = {
        "client_reference": "R-1",
        "document_type": "policy_renewal_notice",
        "channel": "email",
        "language": "en",
        "brand": "acme",
        "recipient": {"name": "Ada", "email": "ada@example.com"},
        "data": {"policy": "P-1"},
    }
    headers = {"Authorization": f"Bearer {SOURCE_KEY}"}
    async with aiohttp.ClientSession(oms.url, headers=headers) as http:
        async with http.post("/v1/documents", json=body) as response:
            assert response.status == 202
            accepted = await response.json()
        async with http.get(response.headers["Location"]) as response:
            assert response.status == 200
            document = await response.json()
    assert document["id"] == accepted["id"]
    assert document["status"] == "RECEIVED"
