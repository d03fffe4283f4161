"""Per-account cap on uploads being received at once (`S7_MAX_UPLOADS_PER_ACCOUNT`, per server process).

An upload costs disk and bandwidth before a minute is charged (the minutes are reserved once the media is
decoded), so one key must not be able to fill the disk or the link with parallel uploads: beyond the cap a
request is refused with 429 and a Retry-After before its body is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from server.errors import ApiError

RETRY_AFTER_S = 10


class UploadSlots:
    def __init__(self, per_account: int) -> None:
        """`per_account` <= 0: no cap."""
        self._cap = per_account
        self._active: dict[str, int] = {}  # account id -> uploads being received (the event loop's only)

    def active(self, account_id: str) -> int:
        return self._active.get(account_id, 0)

    @contextlib.contextmanager
    def hold(self, account_id: str) -> Iterator[None]:
        """One slot while the body is received; 429 (with Retry-After) when the account has none free."""
        if self._cap > 0 and self.active(account_id) >= self._cap:
            raise ApiError(
                429, "too_many_uploads",
                f"This account already has {self._cap} uploads in progress; wait for one to finish",
                headers={"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
            )
        self._active[account_id] = self.active(account_id) + 1
        try:
            yield
        finally:
            left = self.active(account_id) - 1
            if left > 0:
                self._active[account_id] = left
            else:
                self._active.pop(account_id, None)
