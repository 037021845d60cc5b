"""``govnotify services up|down|status``: the dev processes (RabbitMQ, PostgreSQL, Kafka)."""

from __future__ import annotations

import argparse

from infra import services
from infra.cli.output import print_dict
from infra.settings import get_settings

__all__ = ["cmd_services", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("services", help="start, stop or check RabbitMQ, PostgreSQL and Kafka")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_services)


def cmd_services(args: argparse.Namespace) -> int:
    action = {
        "up": services.services_up,
        "down": services.services_down,
        "status": services.services_status,
    }[args.action]
    print(f"services {args.action}:")
    print_dict(action(get_settings()))
    return 0
