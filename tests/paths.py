"""Where the shared parity fixtures live: ``shared/fixtures`` beside the repository (as CI lays it out)."""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
