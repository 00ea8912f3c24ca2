"""Test-set metrics and the figures evaluate writes."""
