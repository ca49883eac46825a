"""python -m furnace."""

from __future__ import annotations

from furnace.cli import main

raise SystemExit(main())
