"""proto/evalfleet/v1"""
