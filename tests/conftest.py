"""Unit tests draw with the non-interactive Agg backend (no display here, none in CI)."""
import matplotlib

matplotlib.use("Agg")
