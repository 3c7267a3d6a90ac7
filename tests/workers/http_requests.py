"""Send HTTP requests at once, one thread each, and print every answer.

Usage: http_requests.py URL TOKEN TIMEOUT_S METHOD:PATH [METHOD:PATH ...]. POSTs send
``{"title": "probe"}`` (a task for /api/task/create, ignored elsewhere). Prints one
line per request as it ends: ``{"request", "status_code", "body"}``, or ``"error"``
when no answer came within TIMEOUT_S. Run inside a host's network namespace
(``ip netns exec``) to reach its server while the host's link is down.
"""

import json
import sys
import threading

import httpx

url, token, timeout_s, requests = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
lock = threading.Lock()


def send(request: str) -> None:
    method, path = request.split(":", 1)
    record: dict[str, object] = {"request": request}
    try:
        response = httpx.request(
            method,
            url + path,
            headers={"Authorization": f"Bearer {token}"},
            json={"title": "probe"} if method == "POST" else None,
            timeout=timeout_s,
        )
        record.update(status_code=response.status_code, body=response.json())
    except httpx.HTTPError as exc:
        record["error"] = repr(exc)
    with lock:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


threads = [threading.Thread(target=send, args=(request,)) for request in requests]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
