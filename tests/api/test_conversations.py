from __future__ import annotations

from flask.testing import FlaskClient

BASE = "/api/v1/ai/conversations"


def test_list_read_delete(client: FlaskClient) -> None:
    first = client.post("/api/v1/ai/chat", json={"message": "first #tokens=2"}).get_json()["conversationId"]
    second = client.post("/api/v1/ai/chat", json={"message": "second #tokens=2"}).get_json()["conversationId"]
    listed = client.get(BASE).get_json()["conversations"]
    assert [item["id"] for item in listed] == [second, first]
    assert listed[0]["title"] == "second #tokens=2"
    detail = client.get(f"{BASE}/{first}").get_json()
    assert [(m["role"], m["content"], m["status"]) for m in detail["messages"]] == [
        ("user", "first #tokens=2", "complete"),
        ("assistant", "Baby sleep", "complete"),
    ]
    assert detail["messages"][1]["createdAt"].endswith("Z")
    assert client.delete(f"{BASE}/{first}").status_code == 204
    assert client.get(f"{BASE}/{first}").status_code == 404
    assert client.delete(f"{BASE}/{first}").status_code == 404
    assert [item["id"] for item in client.get(BASE).get_json()["conversations"]] == [second]


def test_paging_and_bad_query(client: FlaskClient) -> None:
    for index in range(3):
        client.post("/api/v1/ai/chat", json={"message": f"page {index} #tokens=1"})
    assert len(client.get(f"{BASE}?limit=2").get_json()["conversations"]) == 2
    assert len(client.get(f"{BASE}?limit=2&offset=2").get_json()["conversations"]) == 1
    response = client.get(f"{BASE}?limit=zero")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "validation_error"


def test_malformed_id_is_not_found(client: FlaskClient) -> None:
    assert client.get(f"{BASE}/not-a-uuid").status_code == 404
