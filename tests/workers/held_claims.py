"""An agent on a host that is about to be cut off: claim, hold, then report late.

Usage: held_claims.py URL TOKEN COUNT. Claims COUNT tasks through the server at URL
and prints ``{"claimed": [{"task_id", "attempt"}, ...]}``. Then waits for a line on
stdin, sends every report (``completed`` with the claim's attempt) at once, one
thread each, prints ``{"reporting": COUNT}``, and prints each answer as it comes:
``{"task_id", "attempt", "status_code", "body"}`` (or ``"error"`` when no answer
came). Run inside the host's network namespace (``ip netns exec``), it reaches its
own server while the host's link is down: the reports wait in that server for the
database and arrive late.
"""

import json
import sys
import threading

import httpx

url, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = threading.Lock()


def emit(record: object) -> None:
    with lock:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


headers = {"Authorization": f"Bearer {token}"}
claims = []
with httpx.Client(base_url=url, headers=headers, timeout=30.0) as client:
    for _ in range(count):
        response = client.post("/api/task/claim", json={})
        response.raise_for_status()
        body = response.json()
        if "task_id" not in body:
            break
        claims.append({"task_id": body["task_id"], "attempt": body["attempt"]})
emit({"claimed": claims})

sys.stdin.readline()


def report(claim: dict[str, object]) -> None:
    # A long timeout: the answer is expected only once the link is back.
    with httpx.Client(base_url=url, headers=headers, timeout=300.0) as client:
        try:
            response = client.post(
                "/api/task/run", json={**claim, "status": "completed", "notes": "late, from the cut-off host"}
            )
        except httpx.HTTPError as exc:
            emit({**claim, "error": repr(exc)})
            return
        emit({**claim, "status_code": response.status_code, "body": response.json()})


threads = [threading.Thread(target=report, args=(claim,)) for claim in claims]
for thread in threads:
    thread.start()
emit({"reporting": len(threads)})
for thread in threads:
    thread.join()
