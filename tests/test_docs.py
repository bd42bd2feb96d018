"""The documentation describes the product: no working history, a short README, links that resolve."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: phrases that tell the project's working history instead of the software
HISTORY = [re.compile(p, re.IGNORECASE) for p in (
    r"\bsessions? \d+",
    r"\b(before|after) the fix\b",
    r"\bearlier (machines?|sessions?|runs?|code|figures?)\b",
    r"\b(another|other|previous|earlier) machines?\b",
    r"\bwork(ing)? periods?\b",
    r"\bpredates?\b",
)]


def _product_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "src").rglob("*.html"))
    files += sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "bench").glob("*.py"))
    files += sorted((ROOT / "scripts").rglob("*.sh")) + sorted((ROOT / "scripts").rglob("*.py"))
    return [f for f in files if f.exists()]


def history_phrases(text: str) -> list[str]:
    return [m.group(0) for pattern in HISTORY for m in pattern.finditer(text)]


def test_the_history_patterns_catch_what_they_are_for():
    assert history_phrases("rerun in session 10 on another machine, before the fix") == [
        "session 10", "before the fix", "another machine"]
    assert history_phrases("leave_one_session_out; IEMOCAP Session1..5; from one machine to another") == []


def test_no_working_history_in_the_product():
    found = {str(f.relative_to(ROOT)): hits for f in _product_files() if (hits := history_phrases(f.read_text()))}
    assert not found, f"working history (say what the software does; changes go to CHANGELOG.md): {found}"


def test_readme_is_a_short_manual_whose_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    install = readme[readme.index("## Install"):].split("```bash\n", 1)[1].splitlines()[0]
    assert install.startswith("pip install serkit --extra-index-url https://download.pytorch.org/whl/cpu")
    assert "docs/serve.png" in readme and (ROOT / "docs" / "serve.png").exists()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_licence_citation_and_changelog_exist():
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert "cff-version" in (ROOT / "CITATION.cff").read_text()
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog\n\n## Unreleased")
