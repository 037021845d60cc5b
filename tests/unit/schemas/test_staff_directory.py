"""The staff directory: the bundled sample, lookups, and invalid files refused at load."""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemas.categories import load_categories
from schemas.staff import (
    Staff,
    StaffDirectory,
    StaffDirectoryError,
    load_staff_directory,
)

STREETS = (
    "韦曲街道 郭杜街道 滦镇街道 黄良街道 兴隆街道 鸣犊街道 太乙宫街道 子午街道 "
    "细柳街道 大兆街道 引镇街道 杨庄街道 王寺街道 五台街道 王莽街道 斗门街道"
).split()


def _minimal() -> dict[str, Any]:
    """A small valid directory; each invalid case below breaks one thing in it."""
    return {
        "service_points": [
            {
                "id": "SC-CHANGAN",
                "name": "长安区政务服务中心",
                "level": "service_centre",
                "on_duty": [
                    {"staff_id": "S001", "name": "王建国", "mobile": "+8613800130001",
                     "webhook": "hall-robot"}
                ],
                "hall_supervisor": {"staff_id": "S100", "name": "李明辉",
                                    "mobile": "138 0013 0100", "webhook": "hall-robot"},
            }
        ],
        "departments": [
            {"name": "税务局", "head": {"staff_id": "S900", "name": "张敏",
                                     "mobile": "+8613800130900"}}
        ],
        "webhooks": {"hall-robot": {"url": "http://127.0.0.1:8099/hooks/hall", "format": "wecom"}},
    }  # fmt: skip


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "staff.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


# ---- the bundled sample ----------------------------------------------------------------------
def test_bundled_directory_covers_the_district() -> None:
    # When
    directory = load_staff_directory()

    # Then
    levels = Counter(p.level for p in directory.service_points)
    assert levels == {
        "service_centre": 1,
        "street_station": 16,
        "community_point": 2,
        "post_station": 4,
    }
    streets = [p for p in directory.service_points if p.level == "street_station"]
    assert [p.id for p in streets] == [f"ST-{n:02d}" for n in range(1, 17)]
    assert all(any(s in p.name for p in streets) for s in STREETS)
    assert directory.service_point("SC-CHANGAN").level == "service_centre"
    for point in directory.service_points:
        assert 1 <= len(point.on_duty) <= 2


def test_bundled_directory_has_a_head_for_every_issuing_department() -> None:
    # Given
    directory = load_staff_directory()
    issuers = {c.issuing_department for c in load_categories().values()}

    # When
    heads = {name: directory.department_head(name) for name in issuers}

    # Then
    assert all(isinstance(head, Staff) for head in heads.values())
    names = {d.name for d in directory.departments}
    assert {"政务服务管理局", "人力资源和社会保障局", "公安分局", "税务局", "民政局"} <= names


def test_bundled_directory_is_fake_and_loopback_only() -> None:
    # Given
    directory = load_staff_directory()

    # When
    people = [s for p in directory.service_points for s in (*p.on_duty, p.hall_supervisor)]
    people += [d.head for d in directory.departments]

    # Then: nobody real can be reached from the sample
    assert all(s.mobile.startswith("+861380013") and len(s.mobile) == 14 for s in people)
    assert len({s.mobile for s in people}) == len(people)
    # The sample's robots are sandboxes (recorded to a local file), never a real address.
    assert all(w.url == f"sandbox://{name}" for name, w in directory.webhooks.items())
    assert all(directory.webhook_for(s) is not None for s in people)


def test_lookups_of_unknown_names_say_what_is_missing() -> None:
    # Given
    directory = load_staff_directory()

    # When / Then
    with pytest.raises(KeyError, match="service point 'ST-99' is not in the staff directory"):
        directory.service_point("ST-99")
    with pytest.raises(KeyError, match="department '外交部' is not in the staff directory"):
        directory.department_head("外交部")


def test_mobiles_are_normalised_and_webhooks_resolved(tmp_path: Path) -> None:
    # Given
    path = _write(tmp_path, _minimal())

    # When
    directory = load_staff_directory(path)

    # Then
    supervisor = directory.service_point("SC-CHANGAN").hall_supervisor
    assert supervisor.mobile == "+8613800130100"
    hook = directory.webhook_for(supervisor)
    assert hook is not None and hook.format == "wecom"
    assert directory.webhook_for(directory.department_head("税务局")) is None


# ---- invalid files ---------------------------------------------------------------------------
def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _DELETE:
            del target[last]
        elif last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value

    return change


_DELETE = object()


def _duplicate_point(data: dict[str, Any]) -> None:
    twin = copy.deepcopy(data["service_points"][0])
    twin["name"] = "另一个名字"
    data["service_points"].append(twin)


def _duplicate_department(data: dict[str, Any]) -> None:
    data["departments"].append(copy.deepcopy(data["departments"][0]))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            _set("service_points.0.on_duty.0.webhook", "no-such-robot"),
            r"service_points\[0\]\.on_duty\[0\]\.webhook: unknown webhook 'no-such-robot'",
        ),
        (_duplicate_point, r"service_points\[1\]\.id: duplicate 'SC-CHANGAN'"),
        (_duplicate_department, r"departments\[1\]\.name: duplicate '税务局'"),
        (
            _set("service_points.0.on_duty.0.mobile", "+86 12345"),
            r"service_points\[0\]\.on_duty\[0\]\.mobile: not a mainland mobile number",
        ),
        (
            _set("service_points.0.hall_supervisor", _DELETE),
            r"service_points\[0\]\.hall_supervisor: Field required",
        ),
        (
            _set("service_points.0.level", "province_centre"),
            r"service_points\[0\]\.level: Input should be 'service_centre'",
        ),
        (
            _set("service_points.0.on_duty", []),
            r"staff.json: service_points\[0\]\.on_duty: Tuple should have at least 1 item[^;]*$",
        ),
        (_set("service_points.0.region", "陕西"), r"service_points\[0\]\.region: Extra inputs"),
        (_set("webhooks.hall-robot.url", "ftp://x"), r"webhooks\.hall-robot\.url: must be an http"),
        (_set("webhooks.hall-robot.format", "slack"), r"webhooks\.hall-robot\.format: Input"),
        (_set("webhooks.hall-robot.secret", "s3cret"), r"webhooks\.hall-robot: secret: WeCom"),
        (
            _set("departments.0.head.staff_id", "S001"),
            r"departments\[0\]\.head\.staff_id: 'S001' differs from the one at "
            r"service_points\[0\]\.on_duty\[0\]",
        ),
    ],
)
def test_invalid_files_name_the_path_and_field(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], match: str
) -> None:
    # Given
    data = _minimal()
    change(data)
    path = _write(tmp_path, data)

    # When
    with pytest.raises(StaffDirectoryError, match=match) as caught:
        load_staff_directory(path)

    # Then
    assert str(path) in str(caught.value)
    assert "+86 12345" not in str(caught.value)  # values are never echoed


@pytest.mark.parametrize(
    ("content", "match"),
    [("{not json", "not JSON: .* line 1 column 2"), (None, "cannot read")],
)
def test_unreadable_files_name_the_path(tmp_path: Path, content: str | None, match: str) -> None:
    # Given
    path = tmp_path / "staff.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")

    # When / Then
    with pytest.raises(StaffDirectoryError, match=match) as caught:
        load_staff_directory(path)
    assert str(path) in str(caught.value)


# ---- e-mail entries --------------------------------------------------------------------------
def _with_mail_head(hook: dict[str, Any]) -> dict[str, Any]:
    """The minimal directory with the 税务局 head reached by the webhook ``head-mail``."""
    data = _minimal()
    data["webhooks"]["head-mail"] = hook
    data["departments"][0]["head"]["webhook"] = "head-mail"
    return data


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("mailto:market-head@changan.gov.cn", "market-head@changan.gov.cn"),
        ("mailto:tax.head%2Bcalls@changan.gov.cn", "tax.head+calls@changan.gov.cn"),
        ("mailto:head@[127.0.0.1]", "head@[127.0.0.1]"),
    ],
)
def test_a_head_can_be_reached_by_email(tmp_path: Path, url: str, address: str) -> None:
    # Given a department head whose webhook is a mailto: entry
    path = _write(tmp_path, _with_mail_head({"url": url, "format": "email"}))

    # When
    directory = load_staff_directory(path)

    # Then
    hook = directory.webhook_for(directory.department_head("税务局"))
    assert hook is not None
    assert (hook.format, hook.email_address) == ("email", address)
    # robots are not addresses
    assert directory.webhooks["hall-robot"].email_address is None


#: A mailto: value that must never be echoed in an error (it is a person's address).
_ADDRESS = "market-head@changan.gov.cn"


@pytest.mark.parametrize(
    ("hook", "match"),
    [
        # the format and the scheme go together, both ways
        ({"url": f"mailto:{_ADDRESS}"}, r"webhooks\.head-mail: format: a mailto: URL needs "
         r'"format": "email"'),
        ({"url": f"mailto:{_ADDRESS}", "format": "wecom"}, r"format: a mailto: URL needs"),
        ({"url": "https://oa.changan.gov.cn/hooks/tax", "format": "email"},
         r'webhooks\.head-mail: url: "format": "email" needs a mailto: URL'),
        ({"url": "sandbox://head-mail", "format": "email"}, r"needs a mailto: URL"),
        # exactly one valid address
        ({"url": "mailto:", "format": "email"}, r"head-mail\.url: mailto: address is empty"),
        ({"url": "mailto:market-head", "format": "email"}, r"url: mailto: address is not an"),
        ({"url": "mailto:market head@changan.gov.cn", "format": "email"},
         r"url: mailto: address is not an e-mail address"),
        ({"url": f"mailto:{_ADDRESS},tax-head@changan.gov.cn", "format": "email"},
         r"url: mailto: address must hold exactly one address, found 2"),
        ({"url": f"mailto:{_ADDRESS}?subject=hi", "format": "email"},
         r"url: mailto: URL takes no \?query"),
        ({"url": f"mailto:{_ADDRESS}%0D%0ABcc:x@y.cn", "format": "email"},
         r"url: mailto: address contains a line break"),
        ({"url": f"mailto:市场<{_ADDRESS}>", "format": "email"},
         r"url: mailto: address must be a bare address"),
        ({"url": "mailto:局长@长安.gov.cn", "format": "email"}, r"must be an ASCII address"),
        ({"url": "mailto:head@-changan.gov.cn", "format": "email"}, r"has an invalid domain"),
        # the server's credentials live in GOVNOTIFY_SMTP_URL, not here
        ({"url": f"mailto:{_ADDRESS}", "format": "email", "secret": "s3cret"},
         r"webhooks\.head-mail: secret: e-mail has no signing"),
    ],
)  # fmt: skip
def test_invalid_email_entries_say_why(tmp_path: Path, hook: dict[str, Any], match: str) -> None:
    # Given
    path = _write(tmp_path, _with_mail_head(hook))

    # When
    with pytest.raises(StaffDirectoryError, match=match) as caught:
        load_staff_directory(path)

    # Then: the file is named, the address is not
    assert str(path) in str(caught.value)
    assert "market-head" not in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_directory_error_is_a_value_error_and_models_are_frozen() -> None:
    # Given
    directory = StaffDirectory.model_validate(_minimal())

    # When / Then
    assert issubclass(StaffDirectoryError, ValueError)
    with pytest.raises(ValueError, match="frozen"):
        directory.departments[0].head.name = "别人"  # type: ignore[misc]
