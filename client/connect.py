"""How the CLI reaches a coordinator: its token and TLS settings, from flags or environment."""

from __future__ import annotations

import argparse
import os

from evalfleet.common.security import CA_ENV, TOKEN_ENV, TOKEN_FILE_ENV, ClientSecurity


def add_client_security_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--auth_token_file", default=None,
                   help="bearer token for the coordinator (default: $EVALFLEET_AUTH_TOKEN_FILE "
                        "or $EVALFLEET_AUTH_TOKEN)")
    p.add_argument("--tls_ca", default=None,
                   help="PEM CA of the coordinator's certificate; enables TLS (default: "
                        "$EVALFLEET_TLS_CA)")
    p.add_argument("--tls_cert", default=None, help="client certificate for mutual TLS")
    p.add_argument("--tls_key", default=None, help="client key for mutual TLS")
    p.add_argument("--tls_server_name", default=None,
                   help="name expected in the coordinator's certificate, when not its host")


def client_security(args: argparse.Namespace) -> ClientSecurity:
    """The settings the flags (or EVALFLEET_AUTH_TOKEN[_FILE], EVALFLEET_TLS_CA) give."""
    token_file = args.auth_token_file or os.environ.get(TOKEN_FILE_ENV)
    return ClientSecurity.from_files(
        token_file=token_file, token=None if token_file else os.environ.get(TOKEN_ENV),
        ca=args.tls_ca or os.environ.get(CA_ENV), cert=args.tls_cert, key=args.tls_key,
        server_name=args.tls_server_name)
