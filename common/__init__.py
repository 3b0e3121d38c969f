"""Pieces every evalfleet service shares: logging, errors, argument parsing, gRPC plumbing."""
