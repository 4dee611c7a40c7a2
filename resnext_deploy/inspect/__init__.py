"""``resnext-deploy inspect``: where a typed file loses accuracy and where the time goes, layer by layer.

:mod:`.sites` finds the sites of a file, :mod:`.accuracy` measures both views on recorded passes,
:mod:`.site_report` ranks them into records, :mod:`.latency` profiles each runtime, :mod:`.render` writes
the tables and the picture; :func:`run_inspect` (in :mod:`.run`) ties them together.
"""

from __future__ import annotations

from .records import INSPECT_JSON, INSPECT_MD, INSPECT_PNG, InspectRecord

__all__ = ["INSPECT_JSON", "INSPECT_MD", "INSPECT_PNG", "InspectRecord"]
