"""How pairing ends when it does not end in trust."""

from __future__ import annotations

from p2pgate.errors import P2PGateError

__all__ = ["PairingFailed"]


class PairingFailed(P2PGateError):
    """Pairing did not complete; the message says why, for people.

    Neither the caller's misuse nor necessarily the peer's fault (a wrong code is an
    outcome), so it derives from the base error. `code` names the outcome for
    programs: `wrong_code`, `burned`, `expired` (also used or unknown), `busy`,
    `bad_code`, `not_found`, `unreachable`, `refused`, `failed`.
    """

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code
