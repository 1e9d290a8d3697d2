"""Copying one store into another (typically SQLite → PostgreSQL when a second gateway replica is added).

Re-running is safe: exchanges are keyed by request_id, keys by key_id, students by (task, version), forgotten
users by their hash, stored Responses API responses by their id, feedback by its request id (newer feedback
replaces older), so only what the destination lacks is added; rollouts are set to the source's values, and a
task's rollout ramp is copied when the source's is newer. Exchanges and responses of users forgotten in either
store are not copied: a re-run after `protege forget` on the destination must not bring the user's rows back from
the source.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.store import Store, StoreError, open_store, user_hash


async def migrate_store(source_url: str, dest_url: str, *, batch_size: int = 500,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Copy exchanges, keys, students, task routing, rollout ramps, forgotten users, feedback and stored responses
    from `source_url` to `dest_url`.

    `progress(done, total)` is called after each batch of exchanges. Returns how many of each were added
    (`exchanges`, `api_keys`, `students`, `rollouts`, `ramps`, `forgotten_users`, `feedback`, `responses`), how many
    exchanges were read (`exchanges_read`) and how many of those were left out because their user is forgotten
    (`exchanges_forgotten`).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if source_url == dest_url:
        raise StoreError("the source and the destination are the same store")
    source, dest = open_store(source_url), open_store(dest_url)
    await source.open()
    try:
        await dest.open()
        try:
            return await _copy(source, dest, batch_size, progress)
        finally:
            await dest.close()
    finally:
        await source.close()


async def _copy(source: Store, dest: Store, batch_size: int,
                progress: Callable[[int, int], None] | None) -> dict[str, int]:
    counts = {"exchanges": 0, "exchanges_read": 0, "exchanges_forgotten": 0, "api_keys": 0, "students": 0,
              "rollouts": 0, "ramps": 0, "forgotten_users": 0, "feedback": 0, "responses": 0}

    # Forgotten users before anything else: from the first copied row on, curation on the destination
    # already keeps them out of datasets.
    forgotten = await source.forgotten_users()
    dest_forgotten = await dest.forgotten_users()
    new = {h: at for h, at in forgotten.items() if h not in dest_forgotten}
    await dest.add_forgotten_users(new)
    counts["forgotten_users"] = len(new)
    skip = forgotten.keys() | dest_forgotten.keys()

    # Then keys and students: they are few, and a gateway pointed at the destination early should
    # authenticate and route as before even while exchanges are still being copied.
    dest_keys = {k.key_id: k for k in await dest.list_api_keys()}
    for key in await source.list_api_keys():
        if key.key_id not in dest_keys:
            await dest.add_api_key(key)
            counts["api_keys"] += 1
        elif key.revoked and not dest_keys[key.key_id].revoked:  # revoked since the last copy
            await dest.revoke_api_key(key.key_id)

    dest_students = {(s.task, s.version) for s in await dest.list_students()}
    for student in await source.list_students():
        if (student.task, student.version) not in dest_students:
            await dest.add_student(student)
            counts["students"] += 1

    for task, percent in (await source.rollouts()).items():
        await dest.set_rollout(task, percent)
        counts["rollouts"] += 1

    dest_ramps = {r.task: r.updated_at for r in await dest.list_ramps()}
    for ramp in await source.list_ramps():
        if ramp.updated_at > dest_ramps.get(ramp.task, float("-inf")):  # the newer record of a task's ramp wins
            await dest.put_ramp(ramp)
            counts["ramps"] += 1

    # Exchanges in keyset pages: constant memory, and rows captured meanwhile are picked up, not skipped.
    total = await source.count_exchanges()
    before = await dest.count_exchanges()
    after: tuple[float, str] | None = None
    while page := await source.list_exchanges(limit=batch_size, after=after):
        kept = [e for e in page if e.user is None or user_hash(e.user) not in skip]
        await dest.insert_exchanges(kept)  # request ids the destination has are ignored
        counts["exchanges_read"] += len(page)
        counts["exchanges_forgotten"] += len(page) - len(kept)
        after = (page[-1].created_at, page[-1].request_id)
        if progress is not None:
            progress(counts["exchanges_read"], max(total, counts["exchanges_read"]))
    # the difference, not the pages' sizes: pages the destination already had add nothing
    counts["exchanges"] = await dest.count_exchanges() - before

    # Feedback after the exchanges it is about
    dest_feedback = {f.request_id: f.created_at for f in await dest.list_feedback()}
    for feedback in await source.list_feedback():
        forgotten_user = feedback.user is not None and user_hash(feedback.user) in skip
        if not forgotten_user and feedback.created_at > dest_feedback.get(feedback.request_id, float("-inf")):
            await dest.put_feedback(feedback)
            counts["feedback"] += 1

    # Conversation state last: a follow-up on the destination finds what it continues
    last: tuple[float, str] | None = None
    while responses := await source.list_responses(limit=batch_size, after=last):
        for response in responses:
            forgotten_user = response.user is not None and user_hash(response.user) in skip
            if not forgotten_user and await dest.get_response(response.response_id) is None:
                await dest.put_response(response)
                counts["responses"] += 1
        last = (responses[-1].created_at, responses[-1].response_id)
    return counts
