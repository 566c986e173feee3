"""The documentation stays true: generated references match the code, every alert has a
runbook and every runbook an alert, every documented setting and metric exists, and README
stays short. (``make test`` also builds the site with ``mkdocs build --strict``.)"""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import yaml

from stream_ae.settings import Settings
from stream_ae.tools import docgen

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_the_references_are_generated_from_the_code_and_up_to_date() -> None:
    for name, text in docgen.generate().items():
        committed = (DOCS / "reference" / name).read_text()
        assert committed == text, f"docs/reference/{name} is out of date: run `make docs`"


def test_every_setting_is_documented_with_a_description() -> None:
    page = (DOCS / "reference" / "settings.md").read_text()
    for field, info in Settings.model_fields.items():
        assert f"`STREAM_AE_{field.upper()}`" in page
        assert info.description, f"{field} has no docstring: the settings page would say nothing about it"


def test_every_alert_has_a_runbook_and_every_runbook_an_alert() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    alerts = {r["alert"]: r["annotations"].get("runbook_url") for g in rules["groups"] for r in g["rules"]}
    missing = [a for a, url in alerts.items() if not url or not (ROOT / url).is_file()]
    assert not missing, f"alerts without a runbook page: {missing}"
    pages = {p.relative_to(ROOT).as_posix() for p in (DOCS / "runbooks").glob("*.md") if p.name != "index.md"}
    assert pages == set(alerts.values()), f"runbook pages without an alert: {pages - set(alerts.values())}"
    for alert, url in alerts.items():
        text = (ROOT / url).read_text()
        assert text.startswith(f"# {alert}\n"), url
        for section in ("## What it means", "## First three checks", "## Fix or silence"):
            assert section in text, f"{url} lacks {section!r}"
        assert len(re.findall(r"(?m)^\d\. ", text)) == 3, f"{url}: three checks"


def test_metrics_named_in_the_docs_exist() -> None:
    exported = set(re.findall(r"`(stream_ae_[a-z_]+)`", (DOCS / "reference" / "metrics.md").read_text()))
    for page in [*(DOCS / "runbooks").glob("*.md"), *(DOCS / "concepts").glob("*.md")]:
        named = set(re.findall(r"\b(stream_ae_[a-z_]+)\b", page.read_text()))
        # a histogram's series (_bucket, _sum, _count) count as its name
        unknown = {n for n in named if n not in exported and not any(n.startswith(e + "_") for e in exported)}
        assert not unknown, f"{page.name} names metrics no process exports: {sorted(unknown)}"


def test_the_record_examples_follow_their_schemas() -> None:
    for schema, example in docgen.examples():
        jsonschema.validate(example, schema)


def test_readme_is_short_and_links_into_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), f"README links to a missing page: {target}"
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        assert page.relative_to(DOCS).as_posix() in nav, f"{page} is not in the site's navigation"
