"""Who we are on the wire: Implementation Class UID and Version Name (PS3.7 D.3.3.2).

The class UID lives under a ``2.25.`` root derived from a UUID we generated once
for this project (PS3.5 B.2: a UUID-derived UID needs no registration). It is
fixed: archives and logs of peers identify our implementation by it.
"""

from __future__ import annotations

from gateway import __version__

#: 2.25 followed by the decimal form of UUID 5b0f3a0e-7d8c-4b6e-9f1a-2c3d4e5f6a7b.
IMPLEMENTATION_CLASS_UID = "2.25.121038809597111885905766484630382275195"

#: At most 16 characters (SH VR, PS3.7 D.3.3.2.3).
IMPLEMENTATION_VERSION_NAME = f"DICOMGW_{__version__}"[:16]
