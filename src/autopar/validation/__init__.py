"""Checks of the cost model against published measurements."""
