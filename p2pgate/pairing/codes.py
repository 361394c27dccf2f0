"""Pairing codes and URIs, as people type and scan them.

A short code is `NAMEPLATE-word-word` (e.g. `7-orbit-maple`): the nameplate picks
the open offer, the two words (16 bits) are the password of a PAKE that allows
three wrong guesses before the code burns. The URI of the QR code carries a
128-bit secret instead, plus where to reach the inviting device.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

from p2pgate.errors import LocalProtocolError

__all__ = ["BadCode", "Invitation", "make_code", "make_uri", "parse_code_or_uri"]

# 256 short, distinct, easy words (no homophones in the list)
_WORD_TEXT = (
    "acid acorn actor adobe agent alarm album alert alley alpha amber ample angle ankle "
    "apple april apron arena armor arrow aspen atlas attic audio autumn avid award bacon "
    "badge bagel baker balmy bamboo banjo barn basil beach beard beech berry bingo bison "
    "blade blank blaze bloom blue board bonus boost brave bread brick brisk broom brush "
    "bubble bucket buddy bugle cabin cable cactus camel candle canoe canvas cargo carrot "
    "castle cedar chalk charm cheek chess chili chorus cider cinema circle civic clay "
    "clever cliff cloud clover coast cobalt cocoa comet coral cosmic cotton crane crayon "
    "creek crisp crown cube cycle daisy dance delta denim desert diary dinner disco dolphin "
    "domino dragon dream drum dune eagle easel echo eclipse elbow elder ember emerald "
    "engine epic falcon fancy feather fence fern ferry fiber fiesta fig finch flame flute "
    "focus forest fossil fox frost fudge galaxy garden garlic gecko gem giant ginger "
    "glacier glove gold gospel grape gravel guitar gull hammer harbor harvest hazel "
    "helmet hero hollow honey horizon hotel husky igloo index indigo iron island ivory "
    "jacket jade jaguar jazz jelly jewel jolly judge juice jungle kayak kettle kiwi koala "
    "ladder lagoon lantern laser lemon lilac lime linen lotus lunar magnet mango maple "
    "marble meadow melon mint mirror mocha moose mosaic motor mural nectar needle nickel "
    "noble nova oasis ocean olive omega onion opal orbit orchid otter oyster paddle panda "
    "paper pebble pepper piano pilot pixel planet plum polar poppy prism pumpkin puzzle "
    "quartz quest quiet radar radio raven rocket ruby saddle salmon sandal satin tiger "
    "tulip violet"
)
WORDS = _WORD_TEXT.split()
_WORD = {w: i for i, w in enumerate(WORDS)}
if len(_WORD) != 256:  # pragma: no cover (a broken word list must not ship)
    raise ImportError("the pairing word list must hold 256 distinct words")


class BadCode(LocalProtocolError):
    """A pairing code or URI that cannot be right."""


@dataclass(frozen=True, slots=True)
class Invitation:
    """What a joiner knows: how to find the offer and which password to use."""

    nameplate: int
    password: bytes
    kind: str  # "code" or "uri"
    addresses: tuple[str, ...] = ()
    relays: tuple[str, ...] = ()


def make_code() -> tuple[str, str]:
    """A fresh (code, uri secret)."""
    nameplate = secrets.randbelow(99) + 1
    words = "-".join(secrets.choice(WORDS) for _ in range(2))
    secret = base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()
    return f"{nameplate}-{words}", secret


def make_uri(code: str, secret: str, addresses: list[str], relays: list[str]) -> str:
    """The p2pgate://pair URI of an offer: code, secret, and any addresses and relays."""
    parts = [f"c={quote(code)}", f"k={secret}"]
    if addresses:
        parts.append("a=" + quote(",".join(addresses), safe=""))
    if relays:
        parts.append("r=" + quote(",".join(relays), safe=""))
    return "p2pgate://pair?" + "&".join(parts)


def _parse_code(text: str) -> tuple[int, str]:
    parts = [p for p in re.split(r"[\s\-_.]+", text.strip().lower()) if p]
    if len(parts) != 3 or not parts[0].isdigit():
        raise BadCode("a pairing code looks like 7-orbit-maple")
    unknown = [w for w in parts[1:] if w not in _WORD]
    if unknown:
        raise BadCode(f"{unknown[0]!r} is not a pairing word; check the code")
    return int(parts[0]), "-".join(parts)


def parse_code_or_uri(text: str) -> Invitation:
    """Parse a typed code (7-orbit-maple) or a p2pgate://pair URI; raises BadCode."""
    text = text.strip()
    if text.lower().startswith("p2pgate://"):
        url = urlsplit(text)
        query = parse_qs(url.query)
        if url.netloc != "pair" or "c" not in query or "k" not in query:
            raise BadCode("not a p2pgate pairing URI")
        nameplate, _ = _parse_code(query["c"][0])
        secret = query["k"][0].strip().lower()
        if not re.fullmatch(r"[a-z2-7]{26}", secret):
            raise BadCode("the pairing URI's secret is damaged")
        addresses = tuple(a for a in query.get("a", [""])[0].split(",") if a)
        relays = tuple(r for r in query.get("r", [""])[0].split(",") if r)
        return Invitation(nameplate, secret.encode(), "uri", addresses, relays)
    nameplate, code = _parse_code(text)
    return Invitation(nameplate, code.encode(), "code")
