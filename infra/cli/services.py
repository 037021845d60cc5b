"""``govnotify services up|down|status``: the dev processes (RabbitMQ, PostgreSQL, Kafka).

``status`` exits 3 when any service is down, so a script or a probe can act on it.
"""

from __future__ import annotations

import argparse

from infra import services
from infra.cli import exits
from infra.cli.options import Verbs, json_option
from infra.cli.output import print_dict, print_json
from infra.settings import get_settings

__all__ = ["cmd_services", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("services", help="start, stop or check RabbitMQ, PostgreSQL and Kafka")
    verbs = Verbs(p)
    verbs.add(
        "up",
        cmd_services,
        "check RabbitMQ/PostgreSQL (started if installed and down), start Kafka, migrate",
        json_option(),
    )
    verbs.add("down", cmd_services, "stop what `services up` started, by pid", json_option())
    verbs.add(
        "status",
        cmd_services,
        "whether each service is up (exit 3 when one is down)",
        json_option(),
    )


def cmd_services(args: argparse.Namespace) -> int:
    action = {
        "up": services.services_up,
        "down": services.services_down,
        "status": services.services_status,
    }[args.action]
    states = action(get_settings())
    # services_status says "up (…)", "down (…)" or "skipped (…)" for each service.
    down = args.action == "status" and any(v.startswith("down") for v in states.values())
    if args.json:
        print_json(
            {
                "action": args.action,
                "services": {
                    name: {"state": value.split(" ", 1)[0], "detail": value}
                    for name, value in states.items()
                },
                "ok": not down,
            }
        )
    else:
        print(f"services {args.action}:")
        print_dict(states)
    return exits.UNREACHABLE if down else exits.OK
