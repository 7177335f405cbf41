"""Every page, for admins, viewers and anonymous visitors, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store.db import AuditEntry
from tests.web.conftest import FixtureData, csrf_token

pytestmark = pytest.mark.parametrize(
    "engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

NOTICE = "Not for diagnostic use"
PAGES = ["/studies", "/models", "/deliveries"]


def _audit(sessions: sessionmaker[Session], action: str) -> list[AuditEntry]:
    with sessions() as session:
        return list(
            session.scalars(
                select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
            )
        )


def test_anonymous_is_sent_to_login(client: TestClient, data: FixtureData) -> None:
    study = data.studies["chest"]
    for path in [*PAGES, "/audit", f"/studies/{study}", "/"]:
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/login"
    login = client.get("/login")
    assert login.status_code == 200
    assert NOTICE in login.text
    assert "DOE^JANE" not in login.text and "PID001" not in login.text


def test_anonymous_gets_no_files_or_exports(client: TestClient, data: FixtureData) -> None:
    study, result = data.studies["chest"], data.results["chest"]
    for path in [
        f"/studies/{study}/results/{result}/gradcam.png",
        f"/studies/{study}/results/{result}/report.pdf",
    ]:
        assert client.get(path).status_code == 401
    assert client.get("/export/studies.csv").status_code == 303


@pytest.mark.parametrize("who", ["admin", "viewer"])
def test_every_page_renders_with_notice(
    who: str, request: pytest.FixtureRequest, data: FixtureData
) -> None:
    client: TestClient = request.getfixturevalue(who)
    for path in [*PAGES, *(f"/studies/{uid}" for uid in data.studies.values())]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert NOTICE in response.text, path
        assert response.headers["cache-control"] == "no-store"
    audit = client.get("/audit")
    assert audit.status_code == (200 if who == "admin" else 403)


def test_studies_list_shows_every_step(admin: TestClient, data: FixtureData) -> None:
    page = admin.get("/studies").text
    assert "5 found" in page
    for text in ["PID001", "DOE, JANE", "ACC002", "PACS_B", "CHEST", "chest-xray-pneumonia"]:
        assert text in page
    # positive result colour-coded, the class then P(class), failed delivery and failed job
    # flagged, the adult's film flagged outside the chest model's intended use
    assert re.search(
        r'class="model prob-high"[^>]*>chest-xray-pneumonia: PNEUMONIA P\(PNEUMONIA\) = 0.91<',
        page,
    )
    assert re.search(
        r'<span class="out-of-scope" title="patient age 64 years, intended 0-17 years">'
        r"OUTSIDE INTENDED USE</span>",
        page,
    )
    assert page.count('class="out-of-scope"') == 1
    # glioma is predicted with P(glioma) 0.60; 0.72 is P(tumour), coloured, never printed
    # next to the class
    assert "brain-mri-tumor: glioma P(glioma) = 0.60<" in page and "0.72" not in page
    assert "1 failed, 1 pending, 1 done" in page
    assert 'class="step step-fail" title="failed">failed' in page
    # the MR study is fully delivered: latency from its last instance (3 s per delivery)
    assert "36.0 s" in page


def test_patient_names_are_escaped(admin: TestClient, data: FixtureData) -> None:
    page = admin.get("/studies").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    detail = admin.get(f"/studies/{data.studies['ct']}").text
    assert "<script>alert(1)</script>" not in detail


def test_filter_is_posted_not_in_url(admin: TestClient, data: FixtureData) -> None:
    token = csrf_token(admin)
    response = admin.post(
        "/studies", data={"csrf_token": token, "q": "doe jane", "action": "apply"}
    )
    assert response.status_code == 303
    assert "doe" not in response.headers["location"].lower()
    page = admin.get(response.headers["location"]).text
    assert "1 found" in page and "PID001" in page and "PID002" not in page
    assert 'value="doe jane"' in page
    # the filter stays for the next pages until cleared
    assert "1 found" in admin.get("/studies?page=1&sort=patient_id&direction=asc").text
    admin.post("/studies", data={"csrf_token": token, "action": "clear"})
    assert "5 found" in admin.get("/studies").text


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"modality": "MR"}, {"PID002"}),
        ({"calling_ae": "PACS_A"}, {"PID001", "PID003", "PID005"}),
        ({"model": "brain-mri-tumor"}, {"PID002"}),
        ({"state": "job_failed"}, {"PID005"}),
        ({"state": "delivery_failed"}, {"PID001"}),
        ({"state": "receiving"}, {"PID003"}),
        ({"state": "unrouted"}, {"PID004"}),
        ({"date_from": "2026-01-11", "date_to": "2026-01-12"}, {"PID002", "PID003"}),
        ({"q": "ACC004"}, {"PID004"}),
        ({"q": "pid00"}, {"PID001", "PID002", "PID003", "PID004", "PID005"}),
        ({"q": "100%_"}, set()),
    ],
)
def test_filters(
    admin: TestClient, data: FixtureData, fields: dict[str, str], expected: set[str]
) -> None:
    token = csrf_token(admin)
    admin.post("/studies", data={"csrf_token": token, **fields})
    page = admin.get("/studies").text
    shown = set(re.findall(r"class=\"small pid\">(PID\d{3})<", page))
    assert shown == expected


def test_invalid_filter_value_is_reported(admin: TestClient, data: FixtureData) -> None:
    token = csrf_token(admin)
    admin.post("/studies", data={"csrf_token": token, "state": "nonsense"})
    page = admin.get("/studies").text
    assert "Invalid filter value: state" in page
    assert "5 found" in page


def test_sorting_and_paging(admin: TestClient, data: FixtureData) -> None:
    page = admin.get("/studies?sort=patient_id&direction=asc").text
    ids = re.findall(r"class=\"small pid\">(PID\d{3})<", page)
    assert ids == sorted(ids) and len(ids) == 5
    page = admin.get("/studies?sort=received&direction=desc").text
    assert re.findall(r"class=\"small pid\">(PID\d{3})<", page)[0] == "PID005"
    assert admin.get("/studies?sort=drop_table").status_code == 422


def test_study_detail(
    admin: TestClient, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    study = data.studies["chest"]
    page = admin.get(f"/studies/{study}").text
    # probabilities, Grad-CAM image from the authenticated endpoint, PDF link
    assert "PNEUMONIA P(PNEUMONIA) = 0.91" in page
    assert '<td class="num">0.91</td>' in page and '<td class="num">0.09</td>' in page
    assert (
        '<p class="out-of-scope">OUTSIDE INTENDED USE: patient age 64 years, intended 0-17 years.'
        in page
    )
    assert f'src="/studies/{study}/results/{data.results["chest"]}/gradcam.png"' in page
    assert f"/studies/{study}/results/{data.results['chest']}/report.pdf" in page
    # SR content tree, read from the SR file
    for text in ["Imaging Measurement Report", "Measurement Group", "Pneumonia", "0.9100"]:
        assert text in page
    # deliveries with attempts and errors, and the timeline
    assert "C-STORE status 0xA700 out of resources" in page and "0xA700" in page
    for kind in ["instance.received", "series.completed", "job.done", "delivery.failed"]:
        assert kind in page
    assert "10.0.0.7" in page  # where the instances came from
    views = _audit(sessions, "view_study")
    assert [(v.username, v.target) for v in views] == [("alice", study)]
    brain = admin.get(f"/studies/{data.studies['brain']}").text
    assert "glioma P(glioma) = 0.60" in brain and "OUTSIDE INTENDED USE" not in brain


def test_multi_slice_plot_and_sc_gradcam(admin: TestClient, data: FixtureData) -> None:
    study, result = data.studies["brain"], data.results["brain"]
    page = admin.get(f"/studies/{study}").text
    assert '<svg class="slices"' in page
    assert page.count('class="bar-pos"') == 3  # slices 5-7 score >= 0.5
    assert "slice 6: 0.950" in page
    image = admin.get(f"/studies/{study}/results/{result}/gradcam.png")
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")


def test_gradcam_and_pdf(
    admin: TestClient, data: FixtureData, sessions: sessionmaker[Session]
) -> None:
    study, result = data.studies["chest"], data.results["chest"]
    image = admin.get(f"/studies/{study}/results/{result}/gradcam.png")
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    pdf = admin.get(f"/studies/{study}/results/{result}/report.pdf")
    assert pdf.status_code == 200
    assert pdf.content.startswith(b"%PDF") and pdf.content.endswith(b"%%EOF\n")
    assert "attachment" in pdf.headers["content-disposition"]
    assert [a.target for a in _audit(sessions, "download_pdf")] == [study]
    # a result id of another study is not served under this study's URL
    other = data.studies["brain"]
    assert admin.get(f"/studies/{other}/results/{result}/gradcam.png").status_code == 404


def test_unknown_and_malformed_study(admin: TestClient, data: FixtureData) -> None:
    assert admin.get("/studies/1.2.3.999").status_code == 404
    response = admin.get("/studies/DOE^JANE", headers={"accept": "text/html"})
    assert response.status_code == 404
    assert NOTICE in response.text


def test_models_page(admin: TestClient, data: FixtureData) -> None:
    page = admin.get("/models").text
    row = re.search(r"<td><strong>chest-xray-pneumonia</strong>.*?</tr>", page, re.S)
    assert row is not None
    cells = [
        re.sub(r"<[^>]+>", "", c).strip()
        for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(0), re.S)
    ]
    assert cells[0].startswith("chest-xray-pneumonia") and "Xception" in cells[0]
    assert cells[1] == "0.3.0"
    assert cells[2].split()[0] in ("present", "waiting")  # weights: installed or not here
    assert cells[3] == (
        "Research and demonstration only. Not for diagnostic use. "
        "Frontal (AP/PA) chest radiographs of children."
    )
    assert cells[4:7] == ["chest", "1", "1"]
    assert cells[7].startswith("1 (100 %)")
    assert cells[8] == "0.4 s" and cells[9] == "0.4 s"


def test_deliveries_page(admin: TestClient, viewer: TestClient, data: FixtureData) -> None:
    page = admin.get("/deliveries").text
    assert "2</small>" in page  # one failed, one pending
    assert f'action="/deliveries/{data.deliveries["chest_sc"]}/retry"' in page
    assert "out of resources" in page
    assert "Retry" not in viewer.get("/deliveries").text
    failed = admin.get("/deliveries?state=failed").text
    assert "1</small>" in failed


def test_audit_page_lists_logins_and_views(admin: TestClient, data: FixtureData) -> None:
    admin.get(f"/studies/{data.studies['brain']}")
    page = admin.get("/audit").text
    assert "view_study" in page and "login" in page and "testclient" in page
    only_views = admin.get("/audit?action=view_study").text
    assert "list_studies</td>" not in only_views
