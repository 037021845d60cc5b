"""Generated license registries for the demo, tests and benchmarks: realistic, reproducible.

Events are built through ``schemas.events.make_event``, so everything generated passes the same
validation as real upstream traffic; ``bad_events`` gives one of each kind of rejected input.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field

from schemas.categories import load_categories
from schemas.events import Event, make_event

__all__ = [
    "GeneratedDay",
    "GeneratedRegistry",
    "bad_events",
    "generate_case_day",
    "generate_registry",
    "license_event",
]

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英"
_FIRMS = ["长安", "曲江", "高新", "航天", "秦岭", "樊川", "韦曲", "郭杜", "子午", "滦镇"]
_TRADES = [
    "餐饮管理有限公司",
    "运输有限公司",
    "诊所",
    "药房",
    "培训学校",
    "建筑工程有限公司",
    "食品店",
    "环保科技有限公司",
    "置业有限公司",
    "医院",
]


def _holder(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.randint(1, 2)))
    return "西安" + rng.choice(_FIRMS) + rng.choice(_TRADES)


def _mobile(rng: random.Random) -> str:
    return f"1{rng.choice('3456789')}{rng.randint(0, 999_999_999):09d}"


def license_event(
    event_type: str,
    license_id: str,
    *,
    category: str,
    holder_name: str = "王伟",
    holder_mobile: str = "13800138000",
    issuing_department: str | None = None,
    issued_on: dt.date,
    expires_on: dt.date,
    occurred_at: dt.datetime,
    source: str = "license-registry",
) -> Event:
    """One ``license.issued`` or ``license.renewed`` event."""
    department = issuing_department or load_categories()[category].issuing_department
    return make_event(
        event_type,
        {
            "license_id": license_id,
            "category": category,
            "holder_name": holder_name,
            "holder_mobile": holder_mobile,
            "issuing_department": department,
            "issued_on": issued_on.isoformat(),
            "expires_on": expires_on.isoformat(),
        },
        source=source,
        occurred_at=occurred_at,
    )


@dataclass
class GeneratedRegistry:
    """Events in publishing order, and what the final registry state is per license."""

    events: list[Event] = field(default_factory=list)
    #: license id → (status, expires_on) after all events
    final: dict[str, tuple[str, dt.date]] = field(default_factory=dict)
    renewed: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)


def generate_registry(
    count: int,
    today: dt.date,
    *,
    seed: int = 2024,
    prefix: str = "LIC",
    renew_share: float = 0.03,
    revoke_share: float = 0.01,
) -> GeneratedRegistry:
    """``count`` licenses over the 10 categories, expiring from 30 days ago to ~400 days ahead.

    A few are then renewed (new expiry years ahead) or revoked, by later events.
    """
    rng = random.Random(seed)
    categories = sorted(load_categories().values(), key=lambda c: c.code)
    out = GeneratedRegistry()
    base_time = dt.datetime.combine(today, dt.time(9, 0), tzinfo=dt.UTC) - dt.timedelta(days=1)
    followups: list[Event] = []
    for n in range(count):
        category = categories[n % len(categories)]
        license_id = f"{prefix}-{category.code[:4].upper()}-{n:06d}"
        expires_on = today + dt.timedelta(days=rng.randint(-30, 400))
        issued_on = expires_on - dt.timedelta(days=365 * category.validity_years)
        holder, mobile = _holder(rng), _mobile(rng)
        out.events.append(
            license_event(
                "license.issued",
                license_id,
                category=category.code,
                holder_name=holder,
                holder_mobile=mobile,
                issued_on=issued_on,
                expires_on=expires_on,
                occurred_at=base_time + dt.timedelta(seconds=n),
            )
        )
        out.final[license_id] = ("live", expires_on)
        roll = rng.random()
        if roll < renew_share:
            new_expiry = expires_on + dt.timedelta(days=365 * category.validity_years)
            followups.append(
                license_event(
                    "license.renewed",
                    license_id,
                    category=category.code,
                    holder_name=holder,
                    holder_mobile=mobile,
                    issued_on=today,
                    expires_on=new_expiry,
                    occurred_at=base_time + dt.timedelta(hours=12, seconds=n),
                )
            )
            out.final[license_id] = ("live", new_expiry)
            out.renewed.add(license_id)
        elif roll < renew_share + revoke_share:
            followups.append(
                make_event(
                    "license.revoked",
                    {"license_id": license_id, "reason": "吊销", "revoked_on": today.isoformat()},
                    source="license-registry",
                    occurred_at=base_time + dt.timedelta(hours=12, seconds=n),
                )
            )
            out.final[license_id] = ("revoked", expires_on)
            out.revoked.add(license_id)
    out.events.extend(followups)
    return out


def bad_events(today: dt.date) -> list[tuple[str, bytes]]:
    """One of each kind of bad input, as (expected reject reason, raw bytes)."""
    good = license_event(
        "license.issued",
        "LIC-BAD-0001",
        category="food_business",
        issued_on=today,
        expires_on=today + dt.timedelta(days=20),
        # The first instant of ``today`` in the centre's zone (UTC+8), past whenever it is
        # ``today`` there: each variant is refused for its own fault, not as an event from the
        # future (occurred_in_future).
        occurred_at=dt.datetime.combine(
            today, dt.time(0), tzinfo=dt.timezone(dt.timedelta(hours=8))
        ),
    )
    envelope = json.loads(good.to_json_bytes())

    def variant(**changes: object) -> bytes:
        value = json.loads(json.dumps(envelope))
        for key, new in changes.items():
            if key.startswith("payload."):
                value["payload"][key.removeprefix("payload.")] = new
            else:
                value[key] = new
        value["event_id"] = str(uuid.uuid4())
        return json.dumps(value, ensure_ascii=False).encode()

    return [
        ("malformed_json", b'{"event_type": "license.issued", "payload": {'),
        ("unknown_type", variant(event_type="license.stolen")),
        ("unknown_version", variant(schema_version=99)),
        ("schema_violation", variant(**{"payload.holder_mobile": "029-88886666"})),
        ("schema_violation", variant(**{"payload.expires_on": "2026-02-30"})),
        ("oversize", variant(**{"payload.holder_name": "长" * 40_000})),
    ]


_ITEMS = [
    ("食品经营许可证核发", "市场监督管理局"),
    ("个体工商户设立登记", "市场监督管理局"),
    ("道路运输经营许可", "交通运输局"),
    ("医疗机构执业登记", "卫生健康局"),
    ("社会保障卡申领", "人力资源和社会保障局"),
    ("居民身份证换领", "公安分局"),
    ("增值税发票领用", "税务局"),
    ("建设工程施工许可证核发", "住房和城乡建设局"),
    ("排污许可证核发", "生态环境局"),
    ("最低生活保障申请", "民政局"),
]
_GROUPS = ("elderly", "disabled", "active_serviceman", "veteran", "pregnant")
#: The district centre, 16 street stations and the 4 post stations of the staff directory.
_POINTS = (
    [("SC-CHANGAN", "长安区政务服务中心", "service_centre")]
    + [(f"ST-{i:02d}", f"长安区第{i}便民服务站", "street_station") for i in range(1, 17)]
    + [(f"PS-{i:02d}", f"长安区政务驿站{i}", "post_station") for i in range(1, 5)]
)


@dataclass
class GeneratedDay:
    """A service centre's day of cases, and the messages a correct pipeline produces for it."""

    events: list[Event] = field(default_factory=list)
    #: message kind → how many: green_alerts, green_escalations, surveys, callback_tasks,
    #: callback_notices, callback_escalations, rectification_tickets
    expected: Counter = field(default_factory=Counter)
    #: department → (satisfied, ratings)
    ratings: dict[str, list[int]] = field(default_factory=dict)


def generate_case_day(
    n_cases: int,
    at: dt.datetime,
    *,
    seed: int = 7,
    prefix: str = "CASE",
    special_share: float = 0.02,
    key_projects: int = 5,
    rated_share: float = 0.7,
    negative_share: float = 0.03,
) -> GeneratedDay:
    """``n_cases`` cases submitted and completed at ``at`` (the pipeline's "now").

    A share of applicants are special-group (half of them acknowledged at once); a few cases
    are key projects (the first ones' callbacks completed); most cases are rated, a few
    negatively (half of those real-name). Every applicant has their own mobile.
    """
    rng = random.Random(seed)
    out = GeneratedDay()
    completed_at = at + dt.timedelta(seconds=1)
    for n in range(n_cases):
        case_id = f"{prefix}-{n:06d}"
        item, department = _ITEMS[n % len(_ITEMS)]
        point = _POINTS[n % len(_POINTS)]
        key_project = n < key_projects
        # Enterprises (key projects) carry no age or group; special groups are citizens.
        special = not key_project and rng.random() < special_share
        groups = [rng.choice(_GROUPS)] if special and rng.random() < 0.7 else []
        age = rng.randint(70, 95) if special and not groups else rng.randint(18, 65)
        mobile = f"1{rng.choice('3456789')}{n:09d}"
        payload: dict[str, object] = {
            "case_id": case_id,
            "service_item": item,
            "department": department,
            "service_point": {"id": point[0], "name": point[1], "level": point[2]},
            "applicant": {
                "kind": "enterprise" if key_project else "citizen",
                "name": _holder(rng),
                "mobile": mobile,
                "age": None if key_project else age,
                "special_groups": groups,
            },
            "key_project": key_project,
            "submitted_at": at.isoformat(),
        }
        if key_project:
            payload["project_steward"] = {
                "staff_id": f"STW-{n:02d}",
                "name": "刘管家",
                "mobile": None,
                "department": department,
            }
        out.events.append(
            make_event("case.submitted", payload, source="case-system", occurred_at=at)
        )
        if special:
            out.expected["green_alerts"] += 1
            if n % 2 == 0:
                out.events.append(
                    make_event(
                        "greenchannel.acknowledged",
                        {
                            "case_id": case_id,
                            "service_point_id": point[0],
                            "staff_id": "S001",
                            "acknowledged_at": at.isoformat(),
                        },
                        source="queue-system",
                        occurred_at=at,
                    )
                )
            else:
                out.expected["green_escalations"] += 1
        out.events.append(
            make_event(
                "case.completed",
                {**payload, "completed_at": completed_at.isoformat()},
                source="case-system",
                occurred_at=completed_at,
            )
        )
        if key_project:
            out.expected["callback_tasks"] += 1
            out.expected["callback_notices"] += 1
            if n < key_projects // 2 + 1:
                out.events.append(
                    make_event(
                        "callback.completed",
                        {
                            "case_id": case_id,
                            "callback_id": "key_project",
                            "staff_id": f"STW-{n:02d}",
                            "outcome": "企业反馈满意",
                            "completed_at": completed_at.isoformat(),
                        },
                        source="case-system",
                        occurred_at=completed_at,
                    )
                )
            else:
                out.expected["callback_escalations"] += 1
        if rng.random() < rated_share:
            rating = (
                rng.randint(1, 2) if rng.random() < negative_share else rng.choice((3, 4, 5, 5, 5))
            )
            real_name = rating > 2 or n % 2 == 0
            out.events.append(
                make_event(
                    "evaluation.submitted",
                    {
                        "evaluation_id": f"EV-{case_id}",
                        "case_id": case_id,
                        "rating": rating,
                        "real_name": real_name,
                        "citizen_mobile": mobile if real_name else None,
                        "comment": "",
                        "department": department,
                        "service_point_id": point[0],
                        "evaluated_at": completed_at.isoformat(),
                    },
                    source="evaluation-system",
                    occurred_at=completed_at,
                )
            )
            sat = out.ratings.setdefault(department, [0, 0])
            sat[0] += rating >= 3
            sat[1] += 1
            if rating <= 2:
                out.expected["rectification_tickets"] += 1
                if real_name:
                    out.expected["callback_tasks"] += 1
                    # Nobody completes a negative review's callback in a generated day.
                    out.expected["callback_escalations"] += 1
        else:
            out.expected["surveys"] += 1
    return out
