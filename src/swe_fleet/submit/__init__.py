"""Submitting council jobs through the Ray Jobs API and following them."""
