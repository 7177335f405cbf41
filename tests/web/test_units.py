"""Small parts on their own: rate limiter, filter store, SR outline, slice plot, PDF."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from dicom_node.web.filters import FilterStore, StudyFilter
from dicom_node.web.ratelimit import LoginLimiter
from dicom_node.web.render import gradcam_png, pdf_bytes, read_sr, slice_plot_svg, sr_tree
from tests.web.conftest import PDF, write_heatmap, write_pdf, write_sc, write_sr


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_window_slides() -> None:
    clock = FakeClock()
    limiter = LoginLimiter(limit=3, window=60, clock=clock)
    for _ in range(3):
        assert not limiter.blocked(["ip:a"])
        limiter.failure(["ip:a", "user:x"])
    assert limiter.blocked(["ip:a"]) and limiter.blocked(["user:x", "ip:b"])
    assert not limiter.blocked(["ip:b"])
    clock.now += 61
    assert not limiter.blocked(["ip:a"])
    limiter.failure(["user:y"])
    limiter.reset("user:y")
    assert not limiter.blocked(["user:y"])


def test_filter_store_keys_and_expiry() -> None:
    store = FilterStore(max_age=3600, max_entries=2)
    filt = StudyFilter(q="doe")
    key = store.put(filt)
    assert store.get(key) == filt
    assert store.put(StudyFilter(modality="CT"), key) == key  # same key kept
    assert store.get("unknown") == StudyFilter() and store.get(None).is_empty()
    store.put(StudyFilter(q="a"))
    store.put(StudyFilter(q="b"))
    assert store.get(key).is_empty()  # the oldest was dropped at the bound
    assert StudyFilter(q="x", modality="CT").describe() == {"q": "x", "modality": "CT"}


def test_sr_outline(tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    write_sr(path, "1.2.3", "Pneumonia", 0.8125)
    [root] = sr_tree(dcmread(path))
    assert root.name == "Imaging Measurement Report" and root.value == "PARTIAL / UNVERIFIED"
    language, measurements = root.children
    assert language.relationship == "HAS CONCEPT MOD"
    assert language.value == "English (United States) (RFC5646 en-US)"
    [group] = measurements.children
    tracking, finding, probability = group.children
    assert (tracking.value_type, tracking.value) == ("TEXT", "finding 1")
    assert finding.value == "Pneumonia (SCT 233604007)"
    assert (probability.value_type, probability.name, probability.value) == (
        "NUM",
        "Probability",
        "0.8125",
    )
    objects = [{"kind": "sr:comprehensive", "path": str(path)}]
    tree, error = read_sr(objects)
    assert tree is not None and error == ""
    missing, error = read_sr([{"kind": "sr", "path": str(tmp_path / "gone.dcm")}])
    assert missing is None and "missing" in error
    (tmp_path / "bad.dcm").write_bytes(b"not dicom")
    broken, error = read_sr([{"kind": "sr", "path": str(tmp_path / "bad.dcm")}])
    assert broken is None and error.startswith("cannot read")


def test_slice_plot() -> None:
    svg = slice_plot_svg([0.1, 0.9, 1.7, -1])
    assert svg.startswith('<svg class="slices"') and svg.count("<rect class=") == 4
    assert svg.count('class="bar-pos"') == 2  # 1.7 is clipped to 1.0
    assert "slice 3: 1.000" in svg and "slice 4: 0.000" in svg
    assert slice_plot_svg([]) == ""


def test_images_and_pdf(tmp_path: Path) -> None:
    write_heatmap(tmp_path / "h.png")
    assert gradcam_png(str(tmp_path / "h.png"), []) == (tmp_path / "h.png").read_bytes()
    write_sc(tmp_path / "sc.dcm", "1.2.3", size=32)
    png = gradcam_png(
        str(tmp_path / "missing.png"), [{"kind": "sc", "path": str(tmp_path / "sc.dcm")}]
    )
    assert png is not None and png.startswith(b"\x89PNG")
    assert gradcam_png("", []) is None
    write_pdf(tmp_path / "pdf.dcm", "1.2.3")
    assert pdf_bytes([{"kind": "pdf", "path": str(tmp_path / "pdf.dcm")}]) == PDF
    assert pdf_bytes([{"kind": "sr", "path": str(tmp_path / "pdf.dcm")}]) is None


def test_person_name_display() -> None:
    from dicom_node.web.templating import _dicom_name

    assert _dicom_name("DOE^JOHN^^DR") == "DOE, JOHN DR"
    assert _dicom_name("=CMD^EVIL") == "CMD, EVIL"  # only an ideographic group
    assert _dicom_name("YAMADA^TARO=山田^太郎") == "YAMADA, TARO"
    assert _dicom_name("") == ""
