"""The facts about value representations the byte-level code needs, in one table (PS3.5 6.2, 7.1.2).

Every module that reads or writes element headers or raw values takes its VR
facts from here: the explicit-VR header forms (:mod:`gateway.parse`,
:mod:`gateway.validate`, the Part 10 meta reader in :mod:`gateway.meta`),
the word size of "other" VRs (:mod:`gateway.transcode`), which VRs hold
bytes (:mod:`gateway.values`, :mod:`gateway.deidentify`). A leaf module:
the protocol core and the rule modules may import it.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "LONG_VRS",
    "LONG_VR_CODES",
    "OTHER_VRS",
    "SHORT_VRS",
    "SHORT_VR_CODES",
    "WORD_SIZE",
]

#: VRs whose explicit-VR element header has two reserved bytes and a 32-bit
#: value length (PS3.5 7.1.2, Table 7.1-1).
LONG_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})

#: VRs whose explicit-VR element header has a 16-bit value length (PS3.5 7.1.2, Table 7.1-2).
SHORT_VRS: Final = frozenset(
    {
        "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS",
        "LO", "LT", "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US",
    }
)  # fmt: skip

#: :data:`LONG_VRS` as the two bytes found in a file.
LONG_VR_CODES: Final = frozenset(vr.encode("ascii") for vr in LONG_VRS)
#: :data:`SHORT_VRS` as the two bytes found in a file.
SHORT_VR_CODES: Final = frozenset(vr.encode("ascii") for vr in SHORT_VRS)

#: The "other" VRs: a stream of bytes or of binary words (PS3.5 6.2).
OTHER_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})

#: The word size of each "other" VR whose bytes are swapped between little
#: and big endian (PS3.5 7.3); OB (bytes) is never swapped.
WORD_SIZE: Final[dict[str, int]] = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
